r"""Clipping methods compared over several seeds, trained at once: who ends lower, by how much.

:func:`train_together` trains ``M`` tanh RNNs (:class:`~clipping_lib.lab.training.TanhRNN`)
as one stacked program: weights of shape ``(M, ...)``, batched matrix products and
backpropagation through time written out for all runs at once. Run ``i`` has its own
task, initial weights (``seeds[i]``) and clipper, given as the library's own object
(``NoClip``, ``NormClip``, ``AutoClip``, ``AGC``, ``ZClip``, or
``ExceptReadout(AGC(...))``); the loop applies that clipper's rule to all runs of its
kind at once, on ``(M,)`` tensors, so a clipper's state is one row per run. The tests
check that run ``i`` reproduces ``train_rnn(tasks[i], clippers[i], ...)``, the
step-by-step loop with the library object, up to float rounding.

:func:`compare_methods` builds a methods x seeds grid on it. For a given seed every method
starts from the same weights and sees the same mini-batches, so the methods can be
compared seed by seed (paired differences), and :class:`Comparison` summarises the final
losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from clipping_lib._checks import check_int, check_positive
from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.lab.tasks import SequenceTask
from clipping_lib.lab.threads import single_thread
from clipping_lib.lab.training import TanhRNN, TrainingHistory
from clipping_lib.strategies import Clipper, ClipStep, NoClip, NormClip

__all__ = ["Comparison", "ExceptReadout", "compare_methods", "train_together"]

# TanhRNN.parameters() order; the last two form the readout (final linear) layer.
PARAMETER_NAMES = (
    "rnn.weight_ih_l0",
    "rnn.weight_hh_l0",
    "rnn.bias_ih_l0",
    "rnn.bias_hh_l0",
    "readout.weight",
    "readout.bias",
)
_READOUT = 4  # index of the first readout parameter


class ExceptReadout:
    """Apply ``clipper`` to every parameter of a :class:`TanhRNN` except its readout layer.

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
        return self.clipper(params[:_READOUT])

    def __repr__(self) -> str:
        return f"ExceptReadout({self.clipper!r})"


def _kind(clipper: object) -> str:
    inner = clipper.clipper if isinstance(clipper, ExceptReadout) else clipper
    kinds = {NoClip: "none", NormClip: "norm", AutoClip: "autoclip", AGC: "agc", ZClip: "zclip"}
    kind = kinds.get(type(inner))
    if kind is None or (isinstance(clipper, ExceptReadout) and kind != "agc"):
        raise TypeError(
            "clippers must be NoClip, NormClip, AutoClip, AGC, ZClip or ExceptReadout(AGC), "
            f"got {clipper!r}"
        )
    if getattr(inner, "steps", 0):  # AutoClip and ZClip count their steps
        raise ValueError(f"clippers must be fresh (no steps taken yet), got {clipper!r}")
    return kind


def _column(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _percentile(history: Tensor, quantile: Tensor, window: Tensor) -> Tensor:
    """Row ``i``: the ``quantile[i]`` of its last ``window[i]`` entries (linear interpolation)."""
    steps = history.shape[1]
    start = (steps - window).clamp(min=0)
    keep = torch.arange(steps) >= start[:, None]
    ordered = torch.where(keep, history, math.inf).sort(dim=1).values
    count = keep.sum(dim=1)
    rank = quantile * (count - 1)
    low = ordered.gather(1, rank.floor().long()[:, None])[:, 0]
    high = ordered.gather(1, rank.ceil().long()[:, None])[:, 0]
    return torch.lerp(low, high, rank - rank.floor())


class _Rules:
    """Each run's clipping rule, applied to all runs of one kind at once (one state row per run)."""

    def __init__(self, clippers: Sequence[Clipper], steps: int) -> None:
        kinds = [_kind(c) for c in clippers]
        self.index = {
            kind: torch.tensor([i for i, k in enumerate(kinds) if k == kind])
            for kind in ("none", "norm", "autoclip", "agc", "zclip")
            if kind in kinds
        }
        chosen = {kind: [clippers[i] for i in rows.tolist()] for kind, rows in self.index.items()}
        if "norm" in chosen:
            self.max_norm = _column([c.max_norm for c in chosen["norm"]])
            self.norm_eps = _column([c.eps for c in chosen["norm"]])
        if "autoclip" in chosen:
            autoclips = chosen["autoclip"]
            self.quantile = _column([c.percentile / 100.0 for c in autoclips])
            self.autoclip_eps = _column([c.eps for c in autoclips])
            self.window = torch.tensor([getattr(c, "window", None) or steps for c in autoclips])
            self.history = torch.full((len(autoclips), steps), math.nan)
        if "agc" in chosen:
            agcs = [c.clipper if isinstance(c, ExceptReadout) else c for c in chosen["agc"]]
            self.clipping = _column([a.clipping for a in agcs])
            self.agc_eps = _column([a.eps for a in agcs])
            self.skip_readout = torch.tensor([isinstance(c, ExceptReadout) for c in chosen["agc"]])
        if "zclip" in chosen:
            zclips = chosen["zclip"]
            self.alpha = _column([z.alpha for z in zclips])
            self.z_thresh = _column([z.z_thresh for z in zclips])
            self.zclip_eps = _column([z.eps for z in zclips])
            self.warmup = torch.tensor([z.warmup_steps for z in zclips])
            self.warmup_norms = torch.zeros(len(zclips), int(self.warmup.max()))
            self.mean = torch.full((len(zclips),), math.nan)
            self.var = torch.full((len(zclips),), math.nan)

    def __call__(
        self, step: int, weights: list[Tensor], grads: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Clip ``grads`` in place; return per-run norm before clipping, threshold, clipped."""
        m = grads[0].shape[0]
        squares = [g.flatten(1).pow(2).sum(dim=1) for g in grads]
        norm = torch.sqrt(sum(squares))
        scale = torch.ones(m)
        threshold = torch.full((m,), math.inf)
        clipped = torch.zeros(m, dtype=torch.bool)
        if "norm" in self.index:
            rows = self.index["norm"]
            n = norm[rows]
            scale[rows] = torch.clamp(self.max_norm / (n + self.norm_eps), max=1.0)
            threshold[rows] = self.max_norm
            clipped[rows] = n > self.max_norm
        if "autoclip" in self.index:
            rows = self.index["autoclip"]
            n = norm[rows]
            self.history[:, step] = n
            c = _percentile(self.history[:, : step + 1], self.quantile, self.window)
            hit = n > c
            scale[rows] = torch.where(hit, c / (n + self.autoclip_eps), 1.0)
            threshold[rows] = c
            clipped[rows] = hit
        if "zclip" in self.index:
            rows = self.index["zclip"]
            n = norm[rows]
            warming = step < self.warmup
            if warming.any():
                self.warmup_norms[warming, step] = n[warming]
                done = step + 1 == self.warmup
                for j in done.nonzero().flatten().tolist():
                    collected = self.warmup_norms[j, : self.warmup[j]]
                    self.mean[j], self.var[j] = collected.mean(), collected.var(correction=0)
            std = self.var.sqrt()
            z = (n - self.mean) / (std + self.zclip_eps)
            hit = ~warming & (z > self.z_thresh)
            target = torch.where(hit, self.mean + self.z_thresh**2 / z * std, n)
            scale[rows] = torch.where(hit, target / (n + 1e-6), 1.0)
            threshold[rows] = torch.where(
                warming, math.inf, self.mean + self.z_thresh * (std + self.zclip_eps)
            )
            clipped[rows] = hit
            after = ~warming
            mean = torch.where(after, self.alpha * self.mean + (1 - self.alpha) * target, self.mean)
            var = self.alpha * self.var + (1 - self.alpha) * (target - mean) ** 2
            self.mean, self.var = mean, torch.where(after, var, self.var)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
        if "agc" in self.index:
            rows = self.index["agc"]
            any_unit = torch.zeros(len(rows), dtype=torch.bool)
            for k, (w, g) in enumerate(zip(weights, grads, strict=True)):
                sub_w, sub_g = w[rows], g[rows]
                dims = tuple(range(1, sub_w.ndim))
                if sub_w.ndim > 2:  # a matrix per run: one unit per row
                    dims = tuple(range(2, sub_w.ndim))
                w_norm = torch.linalg.vector_norm(sub_w, dim=dims, keepdim=True)
                g_norm = torch.linalg.vector_norm(sub_g, dim=dims, keepdim=True)
                shape = (-1,) + (1,) * (sub_w.ndim - 1)
                max_norm = w_norm.clamp(min=self.agc_eps.view(shape)) * self.clipping.view(shape)
                trigger = g_norm > max_norm
                if k >= _READOUT:
                    trigger &= ~self.skip_readout.view(shape)
                factor = torch.where(trigger, max_norm / g_norm.clamp(min=1e-6), 1.0)
                g[rows] = sub_g * factor
                any_unit |= trigger.flatten(1).any(dim=1)
            clipped[rows] = any_unit
            # ExceptReadout reports the norm of what AGC saw, before clipping
            inner = torch.sqrt(sum(squares[:_READOUT]))[rows]
            norm[rows] = torch.where(self.skip_readout, inner, norm[rows])
        return norm, threshold, clipped


def _stacked_weights(
    tasks: Sequence[SequenceTask], seeds: Sequence[int], hidden_size: int, recurrent_scale: float
) -> list[Tensor]:
    """The initial weights of each run's ``TanhRNN``, stacked: one ``(M, ...)`` per parameter."""
    built: dict[tuple, TanhRNN] = {}  # one model per distinct (sizes, seed)
    for task, seed in zip(tasks, seeds, strict=True):
        key = (task.input_size, task.output_size, seed)
        if key not in built:
            built[key] = TanhRNN(task.input_size, hidden_size, task.output_size, seed=seed,
                                 recurrent_scale=recurrent_scale)  # fmt: skip
    models = [
        built[task.input_size, task.output_size, seed]
        for task, seed in zip(tasks, seeds, strict=True)
    ]
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
    """Hidden states ``(T, M, B, H)`` of ``M`` tanh RNNs on ``time_major`` inputs ``(T, M or
    1, B, I)`` (run ``i`` reads row ``i``, or all runs the one row)."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    length, _, batch, _ = time_major.shape
    m, hidden_size = b_hh.shape
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


def _loss_and_output_grad(task: SequenceTask, outputs: Tensor, targets: Tensor):
    """Per-run mean loss ``(M,)`` and its gradient with respect to ``outputs`` ``(M, B, out)``."""
    batch = outputs.shape[1]
    if task.loss == "mse":
        error = outputs - targets
        return error.pow(2).mean(dim=(1, 2)), error * (2.0 / error[0].numel())
    log_probs = torch.log_softmax(outputs, dim=2)
    picked = F.one_hot(targets.expand(outputs.shape[:2]), outputs.shape[2]).to(outputs.dtype)
    loss = -(log_probs * picked).sum(dim=2).mean(dim=1)
    return loss, (log_probs.exp() - picked) / batch


def _stacked_loss(
    task: SequenceTask, weights: list[Tensor], inputs: Tensor, targets: Tensor
) -> Tensor:
    """Per-run mean loss ``(M,)``: run ``i`` on ``inputs[i]`` (``(M, B, T, I)``), or every
    run on the same ``inputs`` (``(B, T, I)``)."""
    last = _states(weights, _time_major(inputs))[-1]
    outputs = torch.baddbmm(weights[5][:, None, :], last, weights[4].mT)
    return _loss_and_output_grad(task, outputs, targets)[0]


def _stacked_loss_and_grads(
    task: SequenceTask, weights: list[Tensor], inputs: Tensor, targets: Tensor
) -> tuple[Tensor, list[Tensor]]:
    r"""Per-run loss ``(M,)`` and gradients (one ``(M, ...)`` per parameter), by hand.

    Backpropagation through time written out: with :math:`a_t` the pre-activation,
    :math:`\delta_t = \partial L/\partial a_t = (\partial L/\partial h_t)\odot(1 - h_t^2)`
    and :math:`\partial L/\partial h_{t-1} = \delta_t W_{hh}`; each weight gradient is a
    sum over time, accumulated as the loop goes back. The tests check it against autograd.
    """
    w_ih, w_hh, _, _, w_out, b_out = weights
    time_major = _time_major(inputs)  # (T, M, B, I)
    states = _states(weights, time_major)  # (T, M, B, H)
    outputs = torch.baddbmm(b_out[:, None, :], states[-1], w_out.mT)
    loss, d_outputs = _loss_and_output_grad(task, outputs, targets)
    delta = torch.addcmul(torch.ones(()), states, states, value=-1.0)  # 1 - h_t^2
    grad_ih = torch.zeros_like(w_ih)
    grad_hh = torch.zeros_like(w_hh)
    d_hidden = torch.bmm(d_outputs, w_out)
    for t in range(len(states) - 1, -1, -1):
        delta[t].mul_(d_hidden)
        grad_ih.baddbmm_(delta[t].mT, time_major[t])
        if t:
            grad_hh.baddbmm_(delta[t].mT, states[t - 1])
            d_hidden = torch.bmm(delta[t], w_hh)
    bias = delta.sum(dim=(0, 2))
    grads = [grad_ih, grad_hh, bias, bias.clone(), torch.bmm(d_outputs.mT, states[-1]),
             d_outputs.sum(dim=1)]  # fmt: skip
    return loss, grads


@dataclass(frozen=True)
class Together:
    """What :func:`train_together` returns: one history per run, and held-out losses."""

    histories: list[TrainingHistory]
    eval_steps: np.ndarray  # (E,): the test loss was measured after this many updates
    test_loss: np.ndarray  # (M, E): loss on the held-out set; NaN from the step a run diverged


def _check_tasks(tasks: Sequence[SequenceTask], name: str) -> tuple:
    for task in tasks:
        if not isinstance(task, SequenceTask):
            raise TypeError(f"{name} must be SequenceTasks, got {type(task).__name__}")
    shapes = {(t.length, t.input_size, t.output_size, t.loss) for t in tasks}
    if len(shapes) != 1:
        raise ValueError(
            f"{name} must share length, input size, output size and loss, got {shapes}"
        )
    return shapes.pop()


@single_thread()
def train_together(
    tasks: Sequence[SequenceTask],
    clippers: Sequence[Clipper],
    seeds: Sequence[int],
    *,
    test: SequenceTask,
    lr: float,
    steps: int,
    hidden_size: int = 16,
    batch_size: int = 32,
    recurrent_scale: float = 1.0,
    eval_every: int = 50,
) -> Together:
    r"""Train run ``i``, ``TanhRNN(seed=seeds[i])`` on ``tasks[i]`` with ``clippers[i]``, at once.

    Each step: every run's loss on its own mini-batch ``tasks[i].batch(step,
    batch_size)``, the gradients of all runs by backpropagation through time, each run's
    clipping rule, then SGD, :math:`\theta \leftarrow \theta - \eta\,\hat g`. The clippers
    are read for their settings (they must be fresh) and are not called. A run whose loss
    or norm is not finite stops there, as in ``train_rnn``: its weights are frozen and its
    history ends with that step (so no clipper's non-finite policy comes into play).
    Every ``eval_every`` updates (and before the first) each run's loss on the whole
    held-out set ``test`` is measured. All tasks share sequence length, sizes and loss.
    """
    if not (len(tasks) == len(clippers) == len(seeds) >= 1):
        raise ValueError(
            "tasks, clippers and seeds must have the same length >= 1, got "
            f"{len(tasks)}, {len(clippers)}, {len(seeds)}"
        )
    if _check_tasks(tasks, "tasks") != _check_tasks([test], "test"):
        raise ValueError("test must have the tasks' length, input size, output size and loss")
    if len({task.n for task in tasks}) != 1:
        raise ValueError(
            f"tasks must hold the same number of sequences, got {sorted({t.n for t in tasks})}"
        )
    lr = check_positive(lr, "lr")
    steps = check_int(steps, "steps")
    hidden_size = check_int(hidden_size, "hidden_size")
    batch_size = check_int(batch_size, "batch_size")
    eval_every = check_int(eval_every, "eval_every")
    recurrent_scale = check_positive(recurrent_scale, "recurrent_scale")
    rules = _Rules(clippers, steps)
    m = len(tasks)

    weights = _stacked_weights(tasks, seeds, hidden_size, recurrent_scale)
    alive = torch.ones(m, dtype=torch.bool)
    stopped = torch.full((m,), steps)
    record = {
        name: torch.full((steps, m), math.nan) for name in ("loss", "norm", "applied", "threshold")
    }
    clipped_record = torch.zeros((steps, m), dtype=torch.bool)
    # One copy of each distinct data set; run i reads rows source[i] of the stacked copies.
    distinct = list({id(task): task for task in tasks}.values())
    source = torch.tensor([[id(t) for t in distinct].index(id(task)) for task in tasks])
    n = tasks[0].n // batch_size * batch_size
    if n == 0:
        raise ValueError(
            f"batch_size must be <= the tasks' {tasks[0].n} sequences, got {batch_size}"
        )
    all_inputs = torch.stack([task.inputs[:n] for task in distinct])
    all_targets = torch.stack([task.targets[:n] for task in distinct])
    eval_steps, test_loss = [], []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            held_out = _stacked_loss(test, weights, test.inputs, test.targets)
            eval_steps.append(step)
            test_loss.append(torch.where(alive, held_out, math.nan))
        if step == steps or not alive.any():
            break
        start = step * batch_size % n  # task.batch(step, batch_size) of every run
        inputs = all_inputs[:, start : start + batch_size][source]
        targets = all_targets[:, start : start + batch_size][source]
        loss, grads = _stacked_loss_and_grads(tasks[0], weights, inputs, targets)
        norm, threshold, clipped = rules(step, weights, grads)
        applied = torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads))
        for name, value in (("loss", loss), ("norm", norm), ("applied", applied),
                            ("threshold", threshold)):  # fmt: skip
            record[name][step] = torch.where(alive, value, math.nan)
        clipped_record[step] = alive & clipped
        bad = alive & ~(torch.isfinite(loss) & torch.isfinite(norm))
        stopped = torch.where(bad, step + 1, stopped)
        alive &= ~bad
        for w, g in zip(weights, grads, strict=True):
            keep = alive.view(-1, *[1] * (g.ndim - 1))
            w.sub_(torch.where(keep, g, 0.0), alpha=lr)
    histories = []
    for i, end in enumerate(stopped.tolist()):
        histories.append(TrainingHistory(
            loss=record["loss"][:end, i].double().numpy(),
            grad_norm=record["norm"][:end, i].double().numpy(),
            applied_norm=record["applied"][:end, i].double().numpy(),
            threshold=record["threshold"][:end, i].double().numpy(),
            clipped=clipped_record[:end, i].numpy(),
            diverged=not bool(alive[i]),
            steps=steps,
        ))  # fmt: skip
    return Together(histories, np.array(eval_steps), torch.stack(test_loss, 1).double().numpy())


@dataclass(frozen=True)
class Paired:
    """Method ``a`` minus method ``b``, seed by seed (final held-out loss; lower is better)."""

    differences: np.ndarray  # (n,) over the seeds where neither run diverged

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences))

    @property
    def sd(self) -> float:
        """Sample standard deviation of the differences (ddof = 1)."""
        return float(np.std(self.differences, ddof=1))

    @property
    def t(self) -> float:
        r"""Paired t statistic, :math:`\bar d / (s_d/\sqrt n)`. With 8 seeds and no real
        difference, :math:`|t| > 2.36` happens 5 % of the time (Student's t, 7 degrees of
        freedom)."""
        return self.mean / (self.sd / math.sqrt(self.n))

    @property
    def wins(self) -> int:
        """Seeds on which ``a`` ended lower than ``b``."""
        return int(np.sum(self.differences < 0))


@dataclass(frozen=True)
class Comparison:
    """A methods x seeds grid of runs: histories, held-out losses, and the trivial baseline."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: dict[tuple[str, int], TrainingHistory]
    eval_steps: np.ndarray  # (E,)
    test_loss: np.ndarray  # (methods, seeds, E)
    baseline: float  # the held-out loss of the trivial answer (1/6 for the adding problem)

    @property
    def final_loss(self) -> np.ndarray:
        """``(methods, seeds)``: held-out loss after the last step; NaN where a run diverged."""
        return self.test_loss[:, :, -1]

    @property
    def diverged(self) -> np.ndarray:
        """``(methods, seeds)`` bool."""
        return np.array([[self.runs[m, s].diverged for s in self.seeds] for m in self.methods])

    def final(self, method: str) -> np.ndarray:
        """Final held-out loss of ``method`` on each seed, ``(seeds,)``."""
        return self.final_loss[self.methods.index(method)]

    def run(self, method: str, seed: int | None = None) -> TrainingHistory:
        """The history of ``method`` on ``seed`` (default: the first seed)."""
        return self.runs[method, self.seeds[0] if seed is None else seed]

    def paired(self, a: str, b: str) -> Paired:
        """``a`` minus ``b`` on each seed where both survived."""
        difference = self.final(a) - self.final(b)
        return Paired(difference[np.isfinite(difference)])

    def table(self, reference: str) -> str:
        """Per method: final loss over the seeds (mean, sd, range), divergences, clip rate,
        and the paired difference to ``reference`` (mean, t, seeds won)."""
        lines = [
            f"{'method':>26} {'final held-out loss: mean':>26} {'sd':>6} {'min':>7} {'max':>7} "
            f"{'diverged':>9} {'clip rate':>9}   vs {reference}: {'diff':>7} {'t':>6} {'wins':>5}"
        ]
        for name in self.methods:
            finals = self.final(name)
            ok = finals[np.isfinite(finals)]
            rate = np.mean([self.runs[name, s].clip_rate for s in self.seeds])
            stats = (
                f"{np.mean(ok):26.4f} {np.std(ok, ddof=1):6.4f} {ok.min():7.4f} {ok.max():7.4f}"
                if len(ok) > 1 else f"{'-':>26} {'-':>6} {'-':>7} {'-':>7}"
            )  # fmt: skip
            paired = self.paired(name, reference)
            versus = (
                f"{paired.mean:+7.4f} {paired.t:+6.1f} {paired.wins:>2} of {paired.n}"
                if name != reference and paired.n > 1 else ""
            )  # fmt: skip
            lines.append(
                f"{name:>26} {stats} {int(np.sum(~np.isfinite(finals))):>5} of {len(finals)} "
                f"{rate:9.1%}   {'':>{len(reference) + 4}}{versus}"
            )
        lines.append(f"{'trivial baseline':>26} {self.baseline:26.4f}")
        return "\n".join(lines)


def compare_methods(
    make_task: Callable[[int], SequenceTask],
    methods: Mapping[str, Callable[[], Clipper]],
    seeds: Sequence[int],
    *,
    test: SequenceTask,
    baseline: float,
    data_for: Mapping[str, Callable[[int], SequenceTask]] | None = None,
    **kwargs: object,
) -> Comparison:
    """Every method on every seed, trained together with :func:`train_together`.

    ``make_task(seed)`` builds one seed's training data (``data_for[name](seed)`` instead
    for the methods named there, e.g. a reference run on data without spikes);
    ``methods`` maps a name to a function returning a fresh clipper. For a given seed
    every method starts from the same weights and, given the same data, sees the same
    mini-batches. ``kwargs`` go to :func:`train_together`.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    builders = {name: make_task for name in methods} | dict(data_for or {})
    if set(builders) != set(methods):
        raise ValueError(
            f"data_for names methods not in methods: {sorted(set(builders) - set(methods))}"
        )
    cache: dict[tuple[int, int], SequenceTask] = {}

    def task(name: str, seed: int) -> SequenceTask:
        key = (id(builders[name]), seed)
        if key not in cache:
            cache[key] = builders[name](seed)
        return cache[key]

    keys = [(name, seed) for name in methods for seed in seeds]
    result = train_together(
        [task(name, seed) for name, seed in keys],
        [methods[name]() for name, _ in keys],
        [seed for _, seed in keys],
        test=test,
        **kwargs,
    )
    shape = (len(methods), len(seeds), len(result.eval_steps))
    return Comparison(
        tuple(methods),
        seeds,
        dict(zip(keys, result.histories, strict=True)),
        result.eval_steps,
        result.test_loss.reshape(shape),
        baseline,
    )
