r"""Small training loops for a tanh RNN, with any clipping strategy, returning histories.

One run, the loop a learner would write::

    history = train_rnn(adding_problem(2048, 50), NormClip(1.0), lr=0.3, steps=300)
    history.loss, history.grad_norm, history.clipped, history.diverged

:func:`train_rnn` takes any :class:`~clipping_lib.strategies.Clipper` (``NoClip``,
``NormClip``, ``ValueClip``, an adaptive one); each step is forward, ``backward()``, the
clipper, then plain SGD, :math:`\theta \leftarrow \theta - \eta\,\hat g`. It stops at the
first step whose loss or gradient norm is not finite (the run *diverged*), before that
step is applied.

Many runs at once: :func:`train_many` trains ``M`` copies of the same model (same
initial weights, same mini-batches), each with its own learning rate, clipping method
and threshold, as one stacked program (weights of shape ``(M, ...)``, batched matrix
products). A learning-rate x threshold grid of 36 short runs then costs about as much
as a few single runs; :func:`train_grid` arranges the result as a grid.

Recording costs no host synchronisation: losses, norms and clip flags stay tensors until
the end of the run, except for one finiteness check per step in :func:`train_rnn` (needed
to stop a diverged run) and one every ``check_every`` steps in :func:`train_many`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipping_lib.strategies import Clipper, ClipStep
from clipping_lib.tasks import SequenceTask

Method = Literal["none", "norm", "value"]
METHODS: tuple[str, ...] = ("none", "norm", "value")
NORM_CLIP_EPS = 1e-6  # the eps of PyTorch's clip_grad_norm_ and of NormClip's default
FINAL_WINDOW = 50  # final loss = mean training loss over this many last steps


class TanhRNN(nn.Module):
    r"""``torch.nn.RNN`` (tanh) and a linear readout of the last hidden state.

    :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`, :math:`h_0 = 0`,
    output :math:`W_{out} h_T + b_{out}`. Initial weights come from ``seed`` alone:
    Gaussian, :math:`W_{hh}` scaled so its spectral radius is about ``recurrent_scale``,
    biases zero.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        seed: int = 0,
        recurrent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.readout = nn.Linear(hidden_size, output_size)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, shape, scale in [
                ("weight_ih_l0", (hidden_size, input_size), 1.0 / math.sqrt(input_size)),
                (
                    "weight_hh_l0",
                    (hidden_size, hidden_size),
                    recurrent_scale / math.sqrt(hidden_size),
                ),
                ("readout.weight", (output_size, hidden_size), 1.0 / math.sqrt(hidden_size)),
            ]:
                self.get_parameter(name if "." in name else f"rnn.{name}").copy_(
                    torch.randn(shape, generator=generator) * scale
                )
            for bias in (self.rnn.bias_ih_l0, self.rnn.bias_hh_l0, self.readout.bias):
                bias.zero_()

    def forward(self, inputs: Tensor) -> Tensor:
        _, last_hidden = self.rnn(inputs)
        return self.readout(last_hidden[-1])


def task_loss(task: SequenceTask, outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error (regression) or cross-entropy (classification), per the task."""
    if task.loss == "mse":
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)


@dataclass(frozen=True)
class TrainingHistory:
    """One run, one entry per step taken (a diverged run's last entry is the bad step).

    ``loss[k]`` is the mini-batch loss before update ``k``; ``grad_norm[k]`` the global L2
    norm of the gradients before clipping; ``threshold[k]`` the clipper's threshold (inf
    when none); ``clipped[k]`` whether the clipper changed the gradients.
    """

    loss: np.ndarray
    grad_norm: np.ndarray
    threshold: np.ndarray
    clipped: np.ndarray
    diverged: bool
    steps: int  # the number of steps asked for

    @property
    def steps_run(self) -> int:
        return len(self.loss)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last ``FINAL_WINDOW`` steps; NaN for a diverged run."""
        if self.diverged:
            return math.nan
        return float(np.mean(self.loss[-FINAL_WINDOW:]))

    @property
    def clip_rate(self) -> float:
        """Fraction of steps whose gradients were clipped."""
        return float(np.mean(self.clipped)) if self.steps_run else 0.0


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_task(task: object) -> SequenceTask:
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    return task


def train_rnn(
    task: SequenceTask,
    clipper: Clipper | Callable[..., ClipStep],
    *,
    lr: float,
    steps: int,
    hidden_size: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    recurrent_scale: float = 1.0,
) -> TrainingHistory:
    """Train a :class:`TanhRNN` on ``task`` with SGD, clipping each gradient with ``clipper``.

    The model's initial weights depend on ``seed`` only and the mini-batches on the step
    number only, so two calls that differ in ``clipper`` or ``lr`` see the same model and
    the same data.
    """
    task = _check_task(task)
    if not callable(clipper):
        raise TypeError(f"clipper must be callable (a Clipper), got {type(clipper).__name__}")
    lr = _check_positive_float(lr, "lr")
    steps = _check_positive_int(steps, "steps")
    hidden_size = _check_positive_int(hidden_size, "hidden_size")
    batch_size = _check_positive_int(batch_size, "batch_size")
    recurrent_scale = _check_positive_float(recurrent_scale, "recurrent_scale")
    model = TanhRNN(
        task.input_size, hidden_size, task.output_size, seed=seed, recurrent_scale=recurrent_scale
    )
    params = list(model.parameters())
    losses: list[Tensor] = []
    records: list[ClipStep] = []
    diverged = False
    for step in range(steps):
        inputs, targets = task.batch(step, batch_size)
        loss = task_loss(task, model(inputs), targets)
        for p in params:
            p.grad = None
        loss.backward()
        record = clipper(params)
        losses.append(loss.detach())
        records.append(record)
        if not torch.isfinite(loss.detach() + record.total_norm):  # the one sync per step
            diverged = True
            break
        with torch.no_grad():  # plain SGD, as torch.optim.SGD(params, lr) would do
            for p in params:
                p.add_(p.grad, alpha=-lr)
    return TrainingHistory(
        loss=torch.stack(losses).double().numpy(),
        grad_norm=torch.stack([r.total_norm for r in records]).double().numpy(),
        threshold=torch.stack([r.threshold for r in records]).double().numpy(),
        clipped=torch.stack([r.clipped for r in records]).numpy(),
        diverged=diverged,
        steps=steps,
    )


@dataclass(frozen=True)
class BatchedHistory:
    """``M`` runs trained together; arrays are ``(M, steps)``, NaN after a run diverged."""

    learning_rates: np.ndarray  # (M,)
    methods: tuple[str, ...]  # (M,)
    thresholds: np.ndarray  # (M,), inf for "none"
    loss: np.ndarray
    grad_norm: np.ndarray
    clipped: np.ndarray
    diverged: np.ndarray  # (M,) bool
    diverged_at: np.ndarray  # (M,) the step whose loss or norm was not finite, -1 if none

    @property
    def final_loss(self) -> np.ndarray:
        """Mean loss over the last ``FINAL_WINDOW`` steps of each run; NaN where diverged."""
        return self.loss[:, -FINAL_WINDOW:].mean(axis=1)

    def run(self, index: int) -> TrainingHistory:
        """Run ``index`` as a :class:`TrainingHistory` (cut after its divergence step)."""
        end = self.loss.shape[1] if not self.diverged[index] else self.diverged_at[index] + 1
        return TrainingHistory(
            loss=self.loss[index, :end],
            grad_norm=self.grad_norm[index, :end],
            threshold=np.full(end, self.thresholds[index]),
            clipped=self.clipped[index, :end],
            diverged=bool(self.diverged[index]),
            steps=self.loss.shape[1],
        )


def _stacked_forward(params: dict[str, Tensor], inputs: Tensor) -> Tensor:
    """``M`` tanh RNNs on one batch: ``inputs (B, T, I)`` -> outputs ``(M, B, O)``."""
    drive = torch.einsum("bti,mhi->tmbh", inputs, params["weight_ih"])
    drive = drive + (params["bias_ih"] + params["bias_hh"])[:, None, :]
    steps = drive.unbind(0)  # one view per time step; its backward is a single stack
    w_hh_t = params["weight_hh"].transpose(1, 2)
    hidden = torch.tanh(steps[0])
    for drive_t in steps[1:]:
        hidden = torch.tanh(torch.baddbmm(drive_t, hidden, w_hh_t))
    return torch.baddbmm(
        params["bias_out"][:, None, :], hidden, params["weight_out"].transpose(1, 2)
    )


def _stacked_loss(task: SequenceTask, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-model mean loss, shape ``(M,)``."""
    if task.loss == "mse":
        return ((outputs - targets) ** 2).mean(dim=(1, 2))
    m, b, o = outputs.shape
    per_sample = F.cross_entropy(outputs.reshape(m * b, o), targets.repeat(m), reduction="none")
    return per_sample.view(m, b).mean(dim=1)


def train_many(
    task: SequenceTask,
    learning_rates: Sequence[float],
    methods: Sequence[str],
    thresholds: Sequence[float],
    *,
    steps: int,
    hidden_size: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    recurrent_scale: float = 1.0,
    check_every: int = 25,
) -> BatchedHistory:
    r"""Train ``M`` copies of one :class:`TanhRNN` at once, run ``i`` with its own settings.

    Run ``i`` uses SGD with ``learning_rates[i]`` and clips with ``methods[i]``: ``"none"``,
    ``"norm"`` (:math:`g \leftarrow g\min(1, c/(\lVert g\rVert + 10^{-6}))`, exactly as
    ``NormClip(c)``) or ``"value"`` (:math:`g_i \leftarrow \operatorname{clamp}(g_i, -c, c)`)
    at ``thresholds[i]`` (ignored for ``"none"``). Every run starts from the weights of
    ``TanhRNN(..., seed=seed)`` and sees the mini-batches :func:`train_rnn` sees, so run
    ``i`` reproduces the matching :func:`train_rnn` call up to float rounding. A run that
    diverges is frozen (its weights stop changing) and its later entries are NaN; the loop
    ends early, checked every ``check_every`` steps, once every run has diverged.
    """
    task = _check_task(task)
    steps = _check_positive_int(steps, "steps")
    hidden_size = _check_positive_int(hidden_size, "hidden_size")
    batch_size = _check_positive_int(batch_size, "batch_size")
    check_every = _check_positive_int(check_every, "check_every")
    recurrent_scale = _check_positive_float(recurrent_scale, "recurrent_scale")
    if not (len(learning_rates) == len(methods) == len(thresholds) >= 1):
        raise ValueError(
            "learning_rates, methods and thresholds must have the same length >= 1, got "
            f"{len(learning_rates)}, {len(methods)}, {len(thresholds)}"
        )
    lrs = [_check_positive_float(lr, "learning_rates") for lr in learning_rates]
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"methods must each be one of {METHODS}, got {method!r}")
    for method, threshold in zip(methods, thresholds, strict=True):
        if method != "none":
            _check_positive_float(threshold, "thresholds")
    m = len(lrs)
    is_norm = torch.tensor([method == "norm" for method in methods])
    is_value = torch.tensor([method == "value" for method in methods])
    threshold = torch.tensor(
        [
            math.inf if method == "none" else float(c)
            for method, c in zip(methods, thresholds, strict=True)
        ]
    )
    norm_threshold = torch.where(is_norm, threshold, math.inf)
    value_threshold = torch.where(is_value, threshold, math.inf)
    lr = torch.tensor(lrs)

    model = TanhRNN(
        task.input_size, hidden_size, task.output_size, seed=seed, recurrent_scale=recurrent_scale
    )
    single = {
        "weight_ih": model.rnn.weight_ih_l0,
        "weight_hh": model.rnn.weight_hh_l0,
        "bias_ih": model.rnn.bias_ih_l0,
        "bias_hh": model.rnn.bias_hh_l0,
        "weight_out": model.readout.weight,
        "bias_out": model.readout.bias,
    }
    params = {
        name: p.detach().expand(m, *p.shape).clone().requires_grad_() for name, p in single.items()
    }
    alive = torch.ones(m, dtype=torch.bool)
    losses = torch.full((steps, m), math.nan)
    norms = torch.full((steps, m), math.nan)
    clipped = torch.zeros((steps, m), dtype=torch.bool)
    diverged_at = torch.full((m,), -1)
    for step in range(steps):
        inputs, targets = task.batch(step, batch_size)
        loss = _stacked_loss(task, _stacked_forward(params, inputs), targets)
        grads = torch.autograd.grad(torch.where(alive, loss, 0.0).sum(), list(params.values()))
        squares = sum(g.pow(2).flatten(1).sum(dim=1) for g in grads)
        norm = squares.sqrt()
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        newly_diverged = alive & ~finite
        diverged_at = torch.where(newly_diverged, step, diverged_at)
        losses[step] = torch.where(alive, loss.detach(), math.nan)
        norms[step] = torch.where(alive, norm, math.nan)
        alive = alive & finite
        scale = torch.clamp(norm_threshold / (norm + NORM_CLIP_EPS), max=1.0)
        value_clipped = torch.zeros(m, dtype=torch.bool)
        step_size = torch.where(alive, lr, 0.0)
        with torch.no_grad():
            for p, g in zip(params.values(), grads, strict=True):
                shape = (m,) + (1,) * (g.ndim - 1)
                bound = value_threshold.view(shape)
                value_clipped |= (g.abs() > bound).flatten(1).any(dim=1)
                g = torch.maximum(torch.minimum(g * scale.view(shape), bound), -bound)
                p.sub_(torch.where(alive.view(shape), step_size.view(shape) * g, 0.0))
        clipped[step] = alive & ((is_norm & (norm > norm_threshold)) | (is_value & value_clipped))
        if (step + 1) % check_every == 0 and not alive.any():
            break
    return BatchedHistory(
        learning_rates=np.array(lrs),
        methods=tuple(methods),
        thresholds=threshold.double().numpy(),
        loss=losses.T.double().numpy(),
        grad_norm=norms.T.double().numpy(),
        clipped=clipped.T.numpy(),
        diverged=(diverged_at >= 0).numpy(),
        diverged_at=diverged_at.numpy(),
    )


@dataclass(frozen=True)
class GridResult:
    """A learning-rate x threshold grid of runs: arrays are ``(len(lrs), len(thresholds))``."""

    learning_rates: np.ndarray
    thresholds: np.ndarray  # inf marks the no-clipping column
    method: str
    history: BatchedHistory

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.learning_rates), len(self.thresholds)

    @property
    def final_loss(self) -> np.ndarray:
        return self.history.final_loss.reshape(self.shape)

    @property
    def diverged(self) -> np.ndarray:
        return self.history.diverged.reshape(self.shape)

    def run(self, lr_index: int, threshold_index: int) -> TrainingHistory:
        return self.history.run(lr_index * self.shape[1] + threshold_index)


def train_grid(
    task: SequenceTask,
    learning_rates: Sequence[float],
    thresholds: Sequence[float],
    *,
    method: Method = "norm",
    steps: int,
    **kwargs: object,
) -> GridResult:
    """Every (learning rate, threshold) pair trained at once with :func:`train_many`.

    A threshold of ``math.inf`` means no clipping (a baseline column). ``kwargs`` go to
    :func:`train_many` (``hidden_size``, ``seed``, ``batch_size``, ``recurrent_scale``).
    """
    if method not in ("norm", "value"):
        raise ValueError(f"method must be 'norm' or 'value', got {method!r}")
    if len(learning_rates) < 1 or len(thresholds) < 1:
        raise ValueError("learning_rates and thresholds must each hold at least one value")
    lrs, cs, methods = [], [], []
    for lr in learning_rates:
        for c in thresholds:
            lrs.append(lr)
            cs.append(c)
            methods.append("none" if c == math.inf else method)
    history = train_many(task, lrs, methods, cs, steps=steps, **kwargs)
    return GridResult(
        np.array(learning_rates, dtype=float), np.array(thresholds, dtype=float), method, history
    )
