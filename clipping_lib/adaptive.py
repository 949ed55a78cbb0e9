r"""Adaptive clipping: thresholds that follow the training run instead of a fixed number.

Each method is a :class:`~clipping_lib.strategies.Clipper`: call it once per step with
the parameters after ``backward()`` (what ``clip_grad_norm_`` takes); it clips their
gradients in place and returns a :class:`~clipping_lib.strategies.ClipStep` (the global
L2 norm before clipping, the threshold in force, whether it clipped). No method syncs
with the host: state and decisions stay tensors (``torch.where`` and clamps instead of
Python ``if``). Statistics are kept in float32 (float64 for float64 gradients), on the
gradients' device, whatever the gradients' dtype.

* :class:`AutoClip` (Seetharaman, Wichern, Pardo and Le Roux 2020): clip the global norm
  to the p-th percentile of the norms seen so far (the last ``window`` steps by default,
  every step with ``window=None``), this step's included.
* :class:`AGC`, adaptive gradient clipping (Brock, De, Smith and Simonyan 2021):
  unit-wise, each unit's gradient is clipped relative to the norm of its weights.
* :class:`ZClip` (Kumar, Owen, Roy Chowdhury and Güra 2025): exponential moving averages
  of the mean and variance of the norm; a norm whose z-score exceeds a threshold is
  clipped, the further out the harder.

**Non-finite steps**, the library's one policy (see :mod:`clipping_lib.strategies`): a
NaN or inf global norm never enters a statistic (AutoClip's history, ZClip's warm-up and
EMAs), so the threshold stays what the finite steps made it; the step's gradients are
scaled as ``clip_grad_norm_`` would scale them (by NaN, or by 0 for an inf norm), so they
stay non-finite and a ``GradScaler`` skips the step.

**Steps with no gradients** (the library's second policy, see
:mod:`clipping_lib.strategies`): when no parameter has a ``.grad``, nothing is measured;
the step enters no statistic (AutoClip's history and step count, ZClip's warm-up, EMAs
and step count), and its ``ClipStep`` has ``has_grads=False`` and a NaN ``total_norm``.

**DTensor gradients** (FSDP2): AutoClip and ZClip keep their statistics on the full norm
(``.full_tensor()`` of the DTensor norm, identical on every rank, equal to the
single-process norm) and scale each rank's shards by the same coefficient.

**torch.compile**: the per-step state of AutoClip (with a ``window``) and ZClip is
tensors updated in place (the step count too), so a compiled training step that calls a
module-level clipper compiles once, not once per step (a Python number that changes every
step would be a guard). The first call moves the state, created on the CPU in float32,
to the gradients' device and dtype: on another device or dtype that is one recompile.
``AutoClip(window=None)`` grows its buffer, so it recompiles as the run grows.

**Checkpoints**: :class:`AutoClip` and :class:`ZClip` have ``state_dict()`` and
``load_state_dict()``, holding only tensors and plain numbers (``torch.save`` it with the
model; ``torch.load(..., weights_only=True)`` reads it). A run resumed from it clips
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from clipping_lib._checks import as_parameter_list, check_eps, check_int, check_positive
from clipping_lib.clip import TensorOrTensors
from clipping_lib.strategies import (
    ClipStep,
    full_like_norm,
    is_dtensor,
    no_grads_step,
    nonfinite_coefficient,
    parameters_with_grads,
    scale_grads_,
    stat_dtype,
    stat_norm,
)

__all__ = ["AGC", "AutoClip", "ZClip", "nan_percentile", "unitwise_norm"]

_INF = float("inf")



def nan_percentile(values: Tensor, q: float) -> Tensor:
    r"""The ``q``-th percentile (0..100) of the non-NaN entries of 1-d ``values``.

    Linear interpolation between order statistics, as ``numpy.percentile``: with the
    :math:`m` non-NaN values sorted, rank :math:`r = (q/100)(m - 1)`, result
    :math:`v_{\lfloor r\rfloor} + (r - \lfloor r\rfloor)(v_{\lceil r\rceil} -
    v_{\lfloor r\rfloor})`. ``inf`` when there is no such entry. A sort and a gather, no
    host sync, no size limit (``torch.quantile`` refuses more than :math:`2^{24}` values).
    """
    ordered = torch.sort(values).values  # NaN sorts last
    count = (~torch.isnan(values)).sum()
    rank = (count - 1).clamp(min=0).double() * (q / 100.0)  # float64: exact weights
    below, above = rank.floor(), rank.ceil()
    low = ordered.gather(0, below.long().view(1))[0]
    high = ordered.gather(0, above.long().view(1))[0]
    result = torch.lerp(low, high, (rank - below).to(values.dtype))
    return torch.where(count > 0, result, _INF)


class AutoClip:
    r"""Clip the global norm to the ``percentile``-th percentile of the norm history.

    At step :math:`t` with global norm :math:`n_t`, the threshold is
    :math:`c_t = \operatorname{percentile}_p(n_{t-w+1}, \dots, n_t)` over the last
    :math:`w` = ``window`` steps (linear interpolation, as ``numpy.percentile`` in the
    authors' code), and a norm above it is scaled by :math:`c_t / (n_t + \varepsilon)`, as
    ``clip_grad_norm_`` scales it. A norm at or below :math:`c_t` is left untouched, so
    ``clipped`` says exactly whether the gradients changed (the authors' code calls
    ``clip_grad_norm_`` on every step, whose :math:`\varepsilon` also shrinks those norms
    by a relative :math:`10^{-6}` or less). The history keeps the norms before clipping.

    ``window=None`` keeps every step, the paper's choice: memory grows by 4 bytes per
    step and the per-step cost, a sort of the whole history, as :math:`T \log T`: on one
    CPU core about 0.3 ms at :math:`T = 10^3` and over 0.1 s at :math:`10^6`
    (``benchmarks/bench_adaptive.py``). The default window of 10 000 steps bounds both:
    40 KB and one sort of 10 000 norms per step, whatever the run's length (the authors'
    ``autoclip`` package offers such a ``history_length`` in its ``QuantileClip``).
    Runs shorter than the window are exactly the paper's. Non-finite norms are kept out
    of the history: they occupy their step of the window as a gap (NaN in
    :attr:`history`). With ``p = 100`` nothing is clipped; the paper recommends ``p = 10``.
    """

    def __init__(
        self, percentile: float = 10.0, *, eps: float = 1e-6, window: int | None = 10_000
    ) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
            raise TypeError(f"percentile must be a real number, got {type(percentile).__name__}")
        if not 0 < percentile <= 100:  # also rejects NaN
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.eps = check_eps(eps)
        self.window = None if window is None else check_int(window, "window", 1)
        # The ring of the last `window` norms (NaN: a gap or a slot not yet filled), and
        # the number of measured steps, a tensor updated in place (no per-step guard
        # under torch.compile). With window=None, the history grows by doubling.
        self._norms = torch.full((self.window or 0,), math.nan)
        self._steps = torch.zeros((), dtype=torch.long)
        self._filled = 0  # window=None only: the host-side length of the history

    @property
    def steps(self) -> int:
        """The number of measured steps so far (steps without gradients are not counted)."""
        return int(self._steps)

    @property
    def history(self) -> Tensor:
        """The norms of the window (every step with ``window=None``), oldest first; a
        non-finite norm is NaN."""
        steps = self.steps
        if self.window is None or steps <= self.window:
            return self._norms[:steps]
        start = steps % self.window
        return torch.cat([self._norms[start:], self._norms[:start]])

    def _follow(self, norm: Tensor) -> None:
        """Move the state to ``norm``'s device and dtype (the first call, or a new device)."""
        if self._norms.device != norm.device or self._norms.dtype != norm.dtype:
            self._norms = self._norms.to(norm.device, norm.dtype)
            self._steps = self._steps.to(norm.device)

    def _ranked(self) -> Tensor:
        """The norms the percentile is taken over (no host sync: unfilled slots are NaN)."""
        return self._norms if self.window is not None else self._norms[: self._filled]

    def _record(self, value: Tensor) -> Tensor:
        """Write this step's norm (NaN for a gap) and return the history to rank."""
        if self.window is not None:
            slot = torch.remainder(self._steps, self.window).view(1)
            self._norms.scatter_(0, slot, value.view(1))
            self._steps.add_(1)
            return self._ranked()  # unfilled slots are NaN: nan_percentile skips them
        if self._filled == len(self._norms):  # grow the history by doubling
            grown = torch.full(
                (max(16, 2 * self._filled),), math.nan, dtype=value.dtype, device=value.device
            )
            grown[: self._filled] = self._norms
            self._norms = grown
        self._norms[self._filled] = value
        self._filled += 1
        self._steps.add_(1)
        return self._ranked()

    @torch.no_grad()
    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        grads = parameters_with_grads(parameters)
        if not grads:  # no measurement: the history and the step count stay as they are
            return no_grads_step(nan_percentile(self._ranked(), self.percentile))
        norm = stat_norm(grads)
        self._follow(norm)
        finite = torch.isfinite(norm)
        history = self._record(torch.where(finite, norm, math.nan))
        threshold = nan_percentile(history, self.percentile)
        clipped = finite & (norm > threshold)
        coef = torch.where(clipped, threshold / (norm + self.eps), 1.0)
        scale_grads_(grads, nonfinite_coefficient(norm, coef))
        return ClipStep(norm, threshold, clipped)

    def state_dict(self) -> dict[str, object]:
        """The step count and the recorded norms (a tensor): all a resumed run needs."""
        window = 0 if self.window is None else self.window  # 0: the full history
        return {"steps": self.steps, "window": window, "norms": self.history.clone()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`'s output; the window must be the same."""
        steps, norms = _state_items(state, "AutoClip", ("steps", "window", "norms"))
        saved = state["window"] or None
        if saved != self.window:
            raise ValueError(
                f"the state was saved with window={saved}, this AutoClip has window={self.window}"
            )
        kept = steps if self.window is None else min(steps, self.window)
        if norms.shape != (kept,):
            raise ValueError(f"state['norms'] must have shape ({kept},), got {tuple(norms.shape)}")
        norms = norms.detach().clone()
        if self.window is None:
            self._norms, self._filled = norms, steps
        else:
            if steps > self.window:  # oldest first -> ring order
                norms = torch.roll(norms, steps % self.window)
            ring = torch.full((self.window,), math.nan, dtype=norms.dtype, device=norms.device)
            ring[:kept] = norms
            self._norms = ring
        self._steps = torch.tensor(steps, device=norms.device)

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile:g}, window={self.window})"


def _state_items(state: Mapping[str, object], owner: str, keys: tuple[str, ...]):
    """Check a state dict's keys and types; return its step count and its tensor."""
    if not isinstance(state, Mapping):
        kind = type(state).__name__
        raise TypeError(f"state must be a dict from {owner}.state_dict(), got {kind}")
    missing = set(keys) - set(state)
    if missing:
        raise ValueError(f"state is missing {sorted(missing)}: not a {owner} state_dict")
    steps = state["steps"]
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"state['steps'] must be an int >= 0, got {steps!r}")
    tensor = state[keys[-1]]
    if not isinstance(tensor, Tensor):
        raise TypeError(f"state[{keys[-1]!r}] must be a Tensor, got {type(tensor).__name__}")
    return int(steps), tensor


def unitwise_norm(tensor: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    r"""The L2 norm of each unit of ``tensor``, shaped to broadcast against it.

    Units follow PyTorch's weight layouts: a tensor with 2 or more dimensions has one unit
    per index of dim 0, which is a row of a ``Linear`` weight ``(out, in)``, an output
    channel of a ``Conv`` weight ``(out, in/groups, *kernel)`` or a row of an
    ``Embedding``. A tensor with 0 or 1 dimensions (biases, norm gains) is one unit.
    ``ConvTranspose`` weights are laid out ``(in, out/groups, *kernel)``, so for them the
    units are input channels. ``dtype`` accumulates and returns the norms in that dtype.
    """
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor, dtype=dtype)
    dims = tuple(range(1, tensor.ndim))
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True, dtype=dtype)


class AGC:
    r"""Adaptive gradient clipping, unit-wise (Brock et al. 2021, NFNets).

    For each unit :math:`i` of each parameter :math:`W` with gradient :math:`G`:

    .. math::  G_i \leftarrow \begin{cases} \lambda \dfrac{\lVert W_i\rVert^\star}
        {\lVert G_i\rVert} G_i & \text{if } \dfrac{\lVert G_i\rVert}{\lVert W_i\rVert^\star}
        > \lambda \\ G_i & \text{otherwise,}\end{cases}
        \qquad \lVert W_i\rVert^\star = \max(\lVert W_i\rVert, \varepsilon)

    with units as in :func:`unitwise_norm`. ``eps`` (the paper's 1e-3) keeps zero-initialised
    weights from having their gradients clipped to zero; it must be > 0. As in the
    authors' code, :math:`\lVert G_i\rVert` in the denominator is floored at 1e-6. The
    paper does not clip the final classifier layer: pass only the parameters to clip.
    Unit norms are taken in float32 (float64 for float64 weights), so fp16 cannot overflow.

    AGC keeps no statistics, so it has no state to checkpoint; a step without gradients
    returns ``has_grads=False``. DTensor parameters are refused with a ``TypeError``. A
    step whose global norm is non-finite is scaled as ``clip_grad_norm_`` would scale it
    (NaN, or 0 for an inf norm).
    There is no single global threshold, so the returned ``threshold`` is ``inf``;
    ``clipped`` is true when any unit was clipped, and :attr:`clipped_fraction` holds the
    fraction of units clipped at the last call (a 0-d tensor).
    """

    def __init__(self, clipping: float = 0.01, *, eps: float = 1e-3) -> None:
        self.clipping = check_positive(clipping, "clipping")
        self.eps = check_positive(eps, "eps")
        self.clipped_fraction = torch.tensor(0.0)

    @torch.no_grad()
    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        params = [p for p in as_parameter_list(parameters, stacklevel=3) if p.grad is not None]
        if not params:
            return no_grads_step(torch.tensor(_INF))
        for index, p in enumerate(params):
            if is_dtensor(p) or is_dtensor(p.grad):
                raise TypeError(
                    f"AGC cannot clip DTensor parameters (the one at position {index} of those "
                    "with gradients): a unit's norm would straddle shards; clip the full "
                    "norm with NormClip, AutoClip or ZClip instead"
                )
        grads = [p.grad for p in params]
        norm = stat_norm(grads)
        global_coef = nonfinite_coefficient(norm, torch.ones_like(norm))
        dtype = stat_dtype(grads)
        units, clipped_units = 0, torch.zeros((), dtype=torch.long, device=norm.device)
        for p in params:
            max_norm = unitwise_norm(p.detach(), dtype).clamp(min=self.eps) * self.clipping
            grad_norm = unitwise_norm(p.grad, dtype)
            trigger = grad_norm > max_norm
            factor = torch.where(trigger, max_norm / grad_norm.clamp(min=1e-6), 1.0)
            p.grad.mul_((factor * global_coef.to(factor.device)).to(p.grad.dtype))
            units += trigger.numel()
            clipped_units = clipped_units + trigger.sum().to(norm.device)
        self.clipped_fraction = clipped_units.to(norm.dtype) / max(units, 1)
        clipped = torch.isfinite(norm) & (clipped_units > 0)
        return ClipStep(norm, full_like_norm(_INF, norm), clipped)

    def __repr__(self) -> str:
        return f"AGC(clipping={self.clipping:g}, eps={self.eps:g})"


class ZClip:
    r"""Z-score clipping of the global norm with EMA statistics (Kumar et al. 2025).

    **Warm-up** (until ``warmup_steps`` finite norms have been seen): nothing is clipped;
    the norms are collected, and at the end :math:`\mu` and :math:`\sigma^2` are their
    mean and (population) variance.

    **Then**, for the norm :math:`g_t`: :math:`z_t = (g_t - \mu)/(\sigma + \varepsilon)`.
    If :math:`z_t > z_{thr}`, the gradients are clipped to the norm

    .. math::  g_t^\star = \mu + \frac{z_{thr}}{z_t / z_{thr}}\,\sigma
                         = \mu + \frac{z_{thr}^2}{z_t}\,\sigma

    (the paper's reciprocal, "adaptive scaling" rule: the larger the spike, the lower it
    lands), else :math:`g_t^\star = g_t`. Then the statistics move towards
    :math:`g_t^\star`, the *clipped* norm, so a spike does not inflate them:
    :math:`\mu \leftarrow \alpha\mu + (1-\alpha) g_t^\star`, then
    :math:`\sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(g_t^\star - \mu)^2` with the
    updated :math:`\mu`, as in the authors' code. A clipped step scales the gradients by
    :math:`g_t^\star/(g_t + 10^{-6})`; any other step leaves them untouched.

    Choices among the variants of the authors' code: the z-score mode with adaptive
    scaling (not "percentile" or "clip to the mean"), no fixed max-norm clipping on top
    and none during warm-up, statistics updated on every finite step. The authors' code
    counts warm-up steps and takes the norm in the parameters' dtype; here a NaN or inf
    norm is no warm-up step and no EMA update (the library's non-finite policy), and the
    statistics are float32 (float64 for float64 gradients).

    The returned ``threshold`` is the norm above which ZClip clips,
    :math:`\mu + z_{thr}(\sigma + \varepsilon)` (``inf`` during warm-up), so
    ``clipped == total_norm > threshold`` on finite steps; a clipped gradient lands below
    it, at :math:`g_t^\star`. ``mean`` and ``var`` hold :math:`\mu` and :math:`\sigma^2`
    (during the warm-up, those of the norms collected so far; NaN before the first); they
    are updated in place, as is the step count (``steps``, the measured steps: a step
    without gradients changes nothing).
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        *,
        warmup_steps: int = 25,
        eps: float = 1e-6,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.z_thresh = check_positive(z_thresh, "z_thresh")
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", 1)
        self.eps = check_eps(eps)
        # Every piece of state is a tensor updated in place (no guard per step under
        # torch.compile); created on the CPU in float32, moved at the first call.
        self._steps = torch.zeros((), dtype=torch.long)
        self._warmup = torch.full((self.warmup_steps,), math.nan)
        self._count = torch.zeros((), dtype=torch.long)  # finite warm-up norms
        self.mean = torch.full((), math.nan)
        self.var = torch.full((), math.nan)

    @property
    def steps(self) -> int:
        """The number of measured steps so far (steps without gradients are not counted)."""
        return int(self._steps)

    def _follow(self, norm: Tensor) -> None:
        """Move the state to ``norm``'s device and dtype (the first call, or a new device)."""
        if self.mean.device != norm.device or self.mean.dtype != norm.dtype:
            for name in ("_warmup", "mean", "var"):
                setattr(self, name, getattr(self, name).to(norm.device, norm.dtype))
            self._count = self._count.to(norm.device)
            self._steps = self._steps.to(norm.device)

    def _threshold(self, warming: Tensor, std: Tensor) -> Tensor:
        return torch.where(warming, _INF, self.mean + self.z_thresh * (std + self.eps))

    @torch.no_grad()
    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        grads = parameters_with_grads(parameters)
        if not grads:  # no measurement: no warm-up slot, no EMA update, no step counted
            warming = self._count < self.warmup_steps
            return no_grads_step(self._threshold(warming, self.var.sqrt()))
        norm = stat_norm(grads)
        self._follow(norm)
        self._steps.add_(1)
        finite = torch.isfinite(norm)
        warming = self._count < self.warmup_steps  # before this step's norm counts

        std = self.var.sqrt()
        z = (norm - self.mean) / (std + self.eps)
        clipped = finite & ~warming & (z > self.z_thresh)
        target = torch.where(clipped, self.mean + self.z_thresh**2 / z * std, norm)
        threshold = self._threshold(warming, std)
        coef = torch.where(clipped, target / (norm + 1e-6), 1.0)
        scale_grads_(grads, nonfinite_coefficient(norm, coef))

        # Warm-up: write a finite norm into the next free slot (a tensor index: no sync).
        collect = finite & warming
        slot = self._count.clamp(max=self.warmup_steps - 1).view(1)
        kept = self._warmup.gather(0, slot)
        self._warmup.scatter_(0, slot, torch.where(collect, norm, kept).view(1))
        self._count.add_(collect.long())
        warm_mean = torch.nanmean(self._warmup)
        warm_var = torch.nanmean((self._warmup - warm_mean) ** 2)
        # After it: the EMAs move towards the clipped norm.
        update = finite & ~warming
        ema_mean = self.alpha * self.mean + (1 - self.alpha) * target
        ema_var = self.alpha * self.var + (1 - self.alpha) * (target - ema_mean) ** 2
        new_mean = torch.where(collect, warm_mean, torch.where(update, ema_mean, self.mean))
        new_var = torch.where(collect, warm_var, torch.where(update, ema_var, self.var))
        self.mean.copy_(new_mean)
        self.var.copy_(new_var)
        return ClipStep(norm, threshold, clipped)

    def state_dict(self) -> dict[str, object]:
        """The statistics (tensors) and the step count: all a resumed run needs."""
        return {
            "steps": self.steps,
            "warmup_count": self._count.clone(),
            "mean": self.mean.clone(),
            "var": self.var.clone(),
            "warmup_norms": self._warmup.clone(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`'s output; ``warmup_steps`` must be the same."""
        keys = ("steps", "warmup_count", "mean", "var", "warmup_norms")
        steps, warmup = _state_items(state, "ZClip", keys)
        if warmup.shape != (self.warmup_steps,):
            raise ValueError(
                f"the state was saved with warmup_steps={warmup.numel()}, this ZClip has "
                f"warmup_steps={self.warmup_steps}"
            )
        for key in ("warmup_count", "mean", "var"):
            if not isinstance(state[key], Tensor) or state[key].ndim != 0:
                raise TypeError(f"state[{key!r}] must be a 0-d Tensor")
        self._steps = torch.tensor(steps, device=warmup.device)
        self._warmup = warmup.detach().clone()
        self._count = state["warmup_count"].detach().clone().long().to(warmup.device)
        self.mean = state["mean"].detach().clone().to(warmup.device, warmup.dtype)
        self.var = state["var"].detach().clone().to(warmup.device, warmup.dtype)

    def __repr__(self) -> str:
        return f"ZClip(alpha={self.alpha:g}, z_thresh={self.z_thresh:g})"
