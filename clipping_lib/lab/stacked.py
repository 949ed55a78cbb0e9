r"""Many tanh RNNs as one program: stacked weights, one batched BPTT, the library's clippers.

The lab's one engine for training ``M`` small :class:`~clipping_lib.lab.training.TanhRNN`
runs at once, used by :func:`~clipping_lib.lab.training.train_many` (notebook 05's grid
and seeds) and :func:`~clipping_lib.lab.compare.train_together` (notebook 07's
comparison):

* :func:`stacked_weights`: run ``i``'s parameters are row ``i`` of one ``(M, ...)`` tensor
  per parameter, in ``TanhRNN.parameters()`` order (:data:`PARAMETER_NAMES`).
* :func:`stacked_loss_and_grads`: every run's mean loss and gradients on its mini-batch,
  by backpropagation through time written out for all runs at once (for many small
  models it costs about half of what autograd does; the tests check it against autograd).
* :class:`StackedClippers`: each run's clipper, given as the library's own object
  (``NoClip``, ``NormClip``, ``ValueClip``, ``AutoClip``, ``AGC``, ``ZClip``), or
  ``ExceptReadout(AGC(...))`` (AGC without the readout layer, Brock et al.'s setup), or
  ``WithMaxNorm(ZClip(...), 1.0)`` (ZClip with its authors' ``max_grad_norm``), applied to
  all runs of its kind at once, with one state row per run. The rules are the library's,
  with its clip-counting rule (a step is clipped when the clipper changed its finite
  gradients) and its non-finite policy (a NaN or inf norm enters no statistic and scales
  the gradients by NaN or 0, as ``clip_grad_norm_`` would); the tests check them step by
  step against the library's clippers on the same gradients, NaN and inf included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipping_lib._checks import as_parameter_list
from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.strategies import Clipper, ClipStep, NoClip, NormClip, ValueClip

__all__ = [
    "PARAMETER_NAMES",
    "READOUT",
    "ExceptReadout",
    "StackedClippers",
    "WithMaxNorm",
    "stacked_loss_and_grads",
    "stacked_norm",
    "stacked_scores",
    "stacked_weights",
]

# TanhRNN.parameters() order; the last two form the readout (final linear) layer.
PARAMETER_NAMES = (
    "rnn.weight_ih_l0",
    "rnn.weight_hh_l0",
    "rnn.bias_ih_l0",
    "rnn.bias_hh_l0",
    "readout.weight",
    "readout.bias",
)
READOUT = 4  # index of the first readout parameter


class ExceptReadout:
    """Apply ``clipper`` to every parameter of a ``TanhRNN`` except its readout layer.

    Brock et al. (2021) apply AGC to every layer except the final linear layer. Call it
    with ``model.parameters()`` of a ``TanhRNN``; the returned :class:`ClipStep` is the
    inner clipper's, whose norm covers only the parameters it saw.
    """

    def __init__(self, clipper: Clipper) -> None:
        if not callable(clipper):
            raise TypeError(f"clipper must be callable (a Clipper), got {type(clipper).__name__}")
        self.clipper = clipper

    def __call__(self, parameters) -> ClipStep:
        params = list(parameters)
        if len(params) != len(PARAMETER_NAMES):
            raise ValueError(
                f"parameters must be the {len(PARAMETER_NAMES)} tensors of a TanhRNN, "
                f"got {len(params)}"
            )
        return self.clipper(params[:READOUT])

    def __repr__(self) -> str:
        return f"ExceptReadout({self.clipper!r})"


class WithMaxNorm:
    r"""``clipper``, then the global norm capped at ``max_norm`` as ``clip_grad_norm_`` caps it.

    The ZClip authors' ``max_grad_norm`` (their code's default is 1.0, and their README's
    usage passes it): during ZClip's warm-up the gradients are clipped with
    ``clip_grad_norm_(..., max_grad_norm)``; after it, to :math:`\min(g_t^\star,` ``max_norm``
    :math:`)`, while ZClip's statistics still follow :math:`g_t^\star` alone. Calling
    ``clipper`` and then ``clip_grad_norm_`` does exactly that. The returned
    :class:`ClipStep` has the norm before either, the lower of the two thresholds, and
    ``clipped`` when either changed the gradients.
    """

    def __init__(self, clipper: Clipper, max_norm: float) -> None:
        if not callable(clipper):
            raise TypeError(f"clipper must be callable (a Clipper), got {type(clipper).__name__}")
        self.clipper = clipper
        self.cap = NormClip(max_norm)

    @property
    def max_norm(self) -> float:
        return self.cap.max_norm

    def __call__(self, parameters) -> ClipStep:
        params = as_parameter_list(parameters, stacklevel=3)
        inner = self.clipper(params)
        capped = self.cap(params)
        threshold = torch.minimum(inner.threshold, capped.threshold)
        clipped = inner.clipped | capped.clipped
        return dataclasses.replace(inner, threshold=threshold, clipped=clipped)

    def __repr__(self) -> str:
        return f"WithMaxNorm({self.clipper!r}, max_norm={self.max_norm:g})"


def stacked_weights(models: Sequence[nn.Module]) -> list[Tensor]:
    """The models' parameters stacked: one ``(M, ...)`` tensor per name in ``PARAMETER_NAMES``."""
    return [
        torch.stack([model.get_parameter(name).detach() for model in models])
        for name in PARAMETER_NAMES
    ]


def _time_major(inputs: Tensor) -> Tensor:
    """``(M, B, T, I)`` per-run inputs, or ``(B, T, I)`` shared ones, as ``(T, M or 1, B, I)``."""
    if inputs.ndim == 3:
        inputs = inputs[None]
    return inputs.permute(2, 0, 1, 3).contiguous()


def _states(weights: list[Tensor], time_major: Tensor) -> Tensor:
    r"""Hidden states ``(T, M, B, H)``, :math:`h_t = \tanh(W_{ih}x_t + b_{ih} + W_{hh}h_{t-1}
    + b_{hh})` with :math:`h_{-1} = 0`, on ``time_major`` inputs ``(T, M or 1, B, I)``."""
    w_ih, w_hh, b_ih, b_hh = weights[:READOUT]
    length, _, batch, _ = time_major.shape
    m, hidden_size = b_hh.shape
    # In-place updates of one preallocated buffer: fresh tensors of this size cost more to
    # allocate than to compute.
    states = torch.empty(length, m, batch, hidden_size)
    states.copy_(torch.matmul(time_major, w_ih.mT))  # (T, M, B, H)
    states += (b_ih + b_hh)[:, None, :]
    w_hh_t = w_hh.mT.contiguous()
    for t in range(length):
        if t:
            states[t].baddbmm_(states[t - 1], w_hh_t)
        # tanh(a) = 2 sigmoid(2a) - 1, the same function to float rounding: PyTorch's CPU
        # sigmoid kernel is several times faster than its tanh at these sizes.
        torch.sigmoid(states[t].mul_(2), out=states[t]).mul_(2).sub_(1)
    return states


def _outputs(weights: list[Tensor], last: Tensor) -> Tensor:
    """The readout of the last hidden states ``(M, B, H)``: ``(M, B, output_size)``."""
    return torch.baddbmm(weights[5][:, None, :], last, weights[4].mT)


def _loss_and_output_grad(loss: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-run mean loss ``(M,)`` and its gradient with respect to ``outputs`` ``(M, B, out)``."""
    batch = outputs.shape[1]
    if loss == "mse":
        error = outputs - targets
        return error.pow(2).mean(dim=(1, 2)), error * (2.0 / error[0].numel())
    log_probs = torch.log_softmax(outputs, dim=2)
    picked = F.one_hot(targets.expand(outputs.shape[:2]), outputs.shape[2]).to(outputs.dtype)
    mean_loss = -(log_probs * picked).sum(dim=2).mean(dim=1)
    return mean_loss, (log_probs.exp() - picked) / batch


def stacked_scores(
    loss: str, weights: list[Tensor], inputs: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-run mean loss and accuracy ``(M,)`` (accuracy NaN for ``loss="mse"``).

    Run ``i`` reads ``inputs[i]`` (``(M, B, T, I)``), or every run the same ``inputs``
    (``(B, T, I)``); ``targets`` likewise.
    """
    outputs = _outputs(weights, _states(weights, _time_major(inputs))[-1])
    mean_loss = _loss_and_output_grad(loss, outputs, targets)[0]
    if loss == "mse":
        return mean_loss, torch.full_like(mean_loss, math.nan)
    accuracy = (outputs.argmax(dim=2) == targets).float().mean(dim=1)
    return mean_loss, accuracy


def stacked_loss_and_grads(
    loss: str, weights: list[Tensor], inputs: Tensor, targets: Tensor
) -> tuple[Tensor, list[Tensor]]:
    r"""Per-run mean loss ``(M,)`` and gradients (one ``(M, ...)`` per parameter), by hand.

    ``loss`` is ``"mse"`` or ``"cross_entropy"``; inputs and targets as in
    :func:`stacked_scores`. Backpropagation through time written out: with :math:`a_t`
    the pre-activation, :math:`\delta_t = \partial L/\partial a_t = (\partial L/\partial
    h_t)\odot(1 - h_t^2)` and :math:`\partial L/\partial h_{t-1} = \delta_t W_{hh}`; each
    weight gradient is a sum over time, accumulated as the loop goes back. Tensors are
    time-major, ``(T, M, B, H)``, so every step reads and writes contiguous memory.
    """
    w_ih, w_hh, _, _, w_out, _ = weights
    time_major = _time_major(inputs)  # (T, M or 1, B, I)
    states = _states(weights, time_major)  # (T, M, B, H)
    outputs = _outputs(weights, states[-1])
    mean_loss, d_outputs = _loss_and_output_grad(loss, outputs, targets)
    delta = torch.addcmul(torch.ones(()), states, states, value=-1.0)  # 1 - h_t^2
    grad_ih = torch.zeros_like(w_ih)
    grad_hh = torch.zeros_like(w_hh)
    shared = time_major.shape[1] == 1  # every run reads the same inputs
    d_hidden = torch.bmm(d_outputs, w_out)
    for t in range(len(states) - 1, -1, -1):
        delta[t].mul_(d_hidden)
        if shared:
            grad_ih += torch.matmul(delta[t].mT, time_major[t, 0])
        else:
            grad_ih.baddbmm_(delta[t].mT, time_major[t])
        if t:
            grad_hh.baddbmm_(delta[t].mT, states[t - 1])
            d_hidden = torch.bmm(delta[t], w_hh)
    bias = delta.sum(dim=(0, 2))
    grads = [grad_ih, grad_hh, bias, bias.clone(), torch.bmm(d_outputs.mT, states[-1]),
             d_outputs.sum(dim=1)]  # fmt: skip
    return mean_loss, grads


def stacked_norm(grads: Sequence[Tensor], count: int | None = None) -> Tensor:
    """Each run's global L2 norm ``(M,)`` of its first ``count`` gradients (default: all),
    taken as ``clip_grad_norm_`` takes it: the norm of the per-tensor norms."""
    norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads[:count]]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)


_KINDS = {NoClip: "none", NormClip: "norm", ValueClip: "value", AutoClip: "autoclip",
          AGC: "agc", ZClip: "zclip"}  # fmt: skip


def _inner(clipper: object) -> object:
    return clipper.clipper if isinstance(clipper, (ExceptReadout, WithMaxNorm)) else clipper


def _kind(clipper: object) -> str:
    inner = _inner(clipper)
    kind = _KINDS.get(type(inner))
    if (
        kind is None
        or (isinstance(clipper, ExceptReadout) and kind != "agc")
        or (isinstance(clipper, WithMaxNorm) and kind in ("value", "agc"))
    ):
        raise TypeError(
            "clippers must be NoClip, NormClip, ValueClip, AutoClip, AGC, ZClip, "
            f"ExceptReadout(AGC) or WithMaxNorm(NormClip, AutoClip or ZClip), got {clipper!r}"
        )
    if getattr(inner, "steps", 0):  # AutoClip and ZClip count their steps
        raise ValueError(f"clippers must be fresh (no steps taken yet), got {clipper!r}")
    return kind


def _column(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _nan_percentile_rows(history: Tensor, q: Tensor) -> Tensor:
    """Row ``i``: ``nan_percentile(history[i], 100 q[i])``, the library's rule, all rows at once."""
    ordered = history.sort(dim=1).values  # NaN sorts last
    count = (~torch.isnan(history)).sum(dim=1)
    rank = (count - 1).clamp(min=0).double() * q  # float64: the library's exact weights
    below, above = rank.floor(), rank.ceil()
    low = ordered.gather(1, below.long()[:, None])[:, 0]
    high = ordered.gather(1, above.long()[:, None])[:, 0]
    result = torch.lerp(low, high, (rank - below).to(history.dtype))
    return torch.where(count > 0, result, math.inf)


class StackedClippers:
    """Each run's library clipper, applied to all runs of one kind at once.

    Built from fresh clippers (read for their settings, never called). Calling it with
    the step number, the stacked weights and gradients clips the gradients in place and
    returns, per run, what the library clipper's :class:`ClipStep` would hold: the global
    norm before clipping (for ``ExceptReadout``, of the parameters it saw), the threshold
    in force and whether the step was clipped.
    """

    def __init__(self, clippers: Sequence[Clipper], steps: int) -> None:
        kinds = [_kind(c) for c in clippers]
        self.m = len(kinds)
        self.cap = _column([c.max_norm if isinstance(c, WithMaxNorm) else math.inf
                            for c in clippers])  # fmt: skip
        self.capped = bool(torch.isfinite(self.cap).any())
        clippers = [c if isinstance(c, ExceptReadout) else _inner(c) for c in clippers]
        self.rows = {
            kind: torch.tensor([i for i, k in enumerate(kinds) if k == kind]) for kind in set(kinds)
        }
        chosen = {k: [clippers[i] for i in rows.tolist()] for k, rows in self.rows.items()}
        self.except_readout = torch.tensor([isinstance(c, ExceptReadout) for c in clippers])
        # NoClip changes nothing and ValueClip clamps each entry (clip_grad_value_); the
        # others scale a non-finite step as clip_grad_norm_ does.
        self.scales = torch.tensor([k not in ("none", "value") for k in kinds])
        self.scales |= torch.isfinite(self.cap)
        if "norm" in chosen:
            self.max_norm = _column([c.max_norm for c in chosen["norm"]])
            self.norm_eps = _column([c.eps for c in chosen["norm"]])
        if "value" in chosen:
            self.clip_value = _column([c.clip_value for c in chosen["value"]])
        if "autoclip" in chosen:
            autoclips = chosen["autoclip"]
            quantiles = [c.percentile / 100.0 for c in autoclips]
            self.quantile = torch.tensor(quantiles, dtype=torch.float64)
            self.autoclip_eps = _column([c.eps for c in autoclips])
            self.window = torch.tensor([c.window or steps for c in autoclips])
            self.history = torch.full((len(autoclips), steps), math.nan)
        if "agc" in chosen:
            agcs = [c.clipper if isinstance(c, ExceptReadout) else c for c in chosen["agc"]]
            self.clipping = _column([a.clipping for a in agcs])
            self.agc_eps = _column([a.eps for a in agcs])
        if "zclip" in chosen:
            zclips = chosen["zclip"]
            self.alpha = _column([z.alpha for z in zclips])
            self.one_minus_alpha = _column([1 - z.alpha for z in zclips])
            self.z_thresh = _column([z.z_thresh for z in zclips])
            self.z_thresh_squared = _column([z.z_thresh**2 for z in zclips])
            self.zclip_eps = _column([z.eps for z in zclips])
            self.warmup = torch.tensor([z.warmup_steps for z in zclips])
            self.warmup_norms = torch.full((len(zclips), int(self.warmup.max())), math.nan)
            self.count = torch.zeros(len(zclips), dtype=torch.long)  # finite warm-up norms
            self.mean = torch.full((len(zclips),), math.nan)
            self.var = torch.full((len(zclips),), math.nan)

    def __call__(
        self, step: int, weights: list[Tensor], grads: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Clip ``grads`` in place; return per-run norm before clipping, threshold, clipped."""
        norm = torch.where(  # the norm of what each run's clipper sees
            self.except_readout, stacked_norm(grads, READOUT), stacked_norm(grads)
        )
        finite = torch.isfinite(norm)
        coef = torch.ones(self.m)
        threshold = torch.full((self.m,), math.inf)
        clipped = torch.zeros(self.m, dtype=torch.bool)
        for kind, rule in (("norm", self._norm), ("autoclip", self._autoclip),
                           ("zclip", self._zclip)):  # fmt: skip
            if kind in self.rows:
                rows = self.rows[kind]
                coef[rows], threshold[rows], clipped[rows] = rule(step, norm[rows])
        if "value" in self.rows:
            threshold[self.rows["value"]] = self.clip_value
        if self.capped:  # WithMaxNorm: clip_grad_norm_ on what the inner rule left
            cap_coef = torch.clamp(self.cap / (norm * coef + 1e-6), max=1.0)
            coef, clipped = coef * cap_coef, clipped | (cap_coef < 1)
            threshold = torch.minimum(threshold, self.cap)
        # The library's non-finite policy: clip_grad_norm_'s min(1, c/n) for any finite c.
        # (WithMaxNorm's cap then meets a NaN norm: NaN, whatever the inner rule left.)
        nonfinite = torch.clamp(1.0 / norm, max=1.0)
        nonfinite = torch.where(torch.isfinite(self.cap), math.nan, nonfinite)
        coef = torch.where(finite | ~self.scales, coef, nonfinite)
        for k, g in enumerate(grads):
            scale = coef if k < READOUT else torch.where(self.except_readout, 1.0, coef)
            g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
        if "value" in self.rows:
            clipped[self.rows["value"]] = self._value(grads)
        if "agc" in self.rows:
            clipped[self.rows["agc"]] = self._agc(weights, grads)
        return norm, threshold, clipped & finite

    def _norm(self, step: int, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        coef = torch.clamp(self.max_norm / (n + self.norm_eps), max=1.0)  # as clip_grad_norm_
        return coef, self.max_norm, coef < 1

    def _autoclip(self, step: int, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.history[:, step] = torch.where(torch.isfinite(n), n, math.nan)
        seen = self.history[:, : step + 1]
        in_window = torch.arange(step + 1) > step - self.window[:, None]
        c = _nan_percentile_rows(torch.where(in_window, seen, math.nan), self.quantile)
        hit = n > c
        return torch.where(hit, c / (n + self.autoclip_eps), 1.0), c, hit

    def _zclip(self, step: int, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        finite = torch.isfinite(n)
        warming = self.count < self.warmup  # before this step's norm counts
        std = self.var.sqrt()
        z = (n - self.mean) / (std + self.zclip_eps)
        hit = finite & ~warming & (z > self.z_thresh)
        target = torch.where(hit, self.mean + self.z_thresh_squared * z.reciprocal() * std, n)
        trigger = self.mean + self.z_thresh * (std + self.zclip_eps)
        threshold = torch.where(warming, math.inf, trigger)
        coef = torch.where(hit, target / (n + 1e-6), 1.0)
        collect = finite & warming  # the warm-up: a finite norm fills the next free slot
        slot = self.count.clamp(max=self.warmup - 1)[:, None]
        kept = self.warmup_norms.gather(1, slot)
        self.warmup_norms.scatter_(1, slot, torch.where(collect[:, None], n[:, None], kept))
        self.count = self.count + collect.long()
        warm_mean = torch.nanmean(self.warmup_norms, dim=1)
        warm_var = torch.nanmean((self.warmup_norms - warm_mean[:, None]) ** 2, dim=1)
        update = finite & ~warming  # after it: the EMAs move towards the clipped norm
        ema_mean = self.alpha * self.mean + self.one_minus_alpha * target
        ema_var = self.alpha * self.var + self.one_minus_alpha * (target - ema_mean) ** 2
        self.mean = torch.where(collect, warm_mean, torch.where(update, ema_mean, self.mean))
        self.var = torch.where(collect, warm_var, torch.where(update, ema_var, self.var))
        return coef, threshold, hit

    def _value(self, grads: list[Tensor]) -> Tensor:
        rows = self.rows["value"]
        bound = self.clip_value
        largest = torch.stack([g[rows].flatten(1).abs().amax(dim=1) for g in grads], 1).amax(1)
        for g in grads:
            shape = (-1,) + (1,) * (g.ndim - 1)
            g[rows] = torch.maximum(torch.minimum(g[rows], bound.view(shape)), -bound.view(shape))
        return largest > bound

    def _agc(self, weights: list[Tensor], grads: list[Tensor]) -> Tensor:
        rows = self.rows["agc"]
        skip_readout = self.except_readout[rows]
        any_unit = torch.zeros(len(rows), dtype=torch.bool)
        for k, (w, g) in enumerate(zip(weights, grads, strict=True)):
            sub_w, sub_g = w[rows], g[rows]
            # a matrix per run has one unit per row; a vector per run is one unit
            dims = tuple(range(2, sub_w.ndim)) if sub_w.ndim > 2 else (1,)
            w_norm = torch.linalg.vector_norm(sub_w, dim=dims, keepdim=True)
            g_norm = torch.linalg.vector_norm(sub_g, dim=dims, keepdim=True)
            shape = (-1,) + (1,) * (sub_w.ndim - 1)
            max_norm = w_norm.clamp(min=self.agc_eps.view(shape)) * self.clipping.view(shape)
            trigger = g_norm > max_norm
            if k >= READOUT:
                trigger &= ~skip_readout.view(shape)
            g[rows] = sub_g * torch.where(trigger, max_norm / g_norm.clamp(min=1e-6), 1.0)
            any_unit |= trigger.flatten(1).any(dim=1)
        return any_unit
