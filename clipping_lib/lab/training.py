r"""Small training loops for a tanh RNN, with any clipping strategy, returning histories.

One run, the loop a learner would write::

    task = adding_problem(4096, 20, seed=0)
    history = train_rnn(task, NormClip(0.1), lr=1.0, steps=600)
    history.loss, history.grad_norm, history.applied_norm, history.clipped, history.diverged

:func:`train_rnn` takes any :class:`~clipping_lib.strategies.Clipper` (``NoClip``,
``NormClip``, ``ValueClip``, an adaptive one); each step is forward, ``backward()``, the
clipper, then plain SGD, :math:`\theta \leftarrow \theta - \eta\,\hat g`. It stops at the
first step whose loss or gradient norm is not finite (the run *diverged*), before that
step is applied.

Many runs at once: :func:`train_many` trains ``M`` copies of the same model (same initial
weights, same mini-batches), each with its own learning rate, clipping method and
threshold, as one stacked program on the lab's one engine for that,
:mod:`clipping_lib.lab.stacked` (weights of shape ``(M, ...)``, batched matrix products,
backpropagation through time written out, the library's clippers applied to all runs). A
learning-rate x threshold grid of 36 short runs then costs about as much as a few single
runs; :func:`train_grid` arranges the result as a grid. Runs may also differ in their
initial weights (``seeds``, one per run), use SGD with momentum, and be scored on held-out
data every few steps (``eval_task``), so several seeds of several methods train as one
program.

Recording costs no host synchronisation: losses, norms and clip flags stay tensors until
the end of the run, except for one finiteness check per step in :func:`train_rnn` (needed
to stop a diverged run) and one every ``check_every`` steps in :func:`train_many`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipping_lib._checks import check_int, check_positive
from clipping_lib.clip import get_total_norm
from clipping_lib.lab.stacked import (
    StackedClippers,
    stacked_loss_and_grads,
    stacked_norm,
    stacked_scores,
    stacked_weights,
)
from clipping_lib.lab.tasks import SequenceTask
from clipping_lib.lab.threads import single_thread
from clipping_lib.strategies import Clipper, ClipStep, NoClip, NormClip, ValueClip

Method = Literal["none", "norm", "value"]
METHODS: tuple[str, ...] = ("none", "norm", "value")
NORM_CLIP_EPS = 1e-6  # the eps of PyTorch's clip_grad_norm_ and of NormClip's default
FINAL_WINDOW = 50  # final loss = mean training loss over this many last steps
_CLIPPERS: dict[str, Callable[[float], Clipper]] = {  # train_many's methods, as clippers
    "none": lambda c: NoClip(),
    "norm": lambda c: NormClip(c, eps=NORM_CLIP_EPS),
    "value": ValueClip,
}


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
    norm of the gradients before clipping; ``applied_norm[k]`` the norm of the gradient the
    SGD step used (after clipping), so update ``k`` moved the weights by ``lr *
    applied_norm[k]``; ``threshold[k]`` the clipper's threshold (inf when none);
    ``clipped[k]`` whether the clipper changed the gradients.
    """

    loss: np.ndarray
    grad_norm: np.ndarray
    applied_norm: np.ndarray
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


def _check_task(task: object) -> SequenceTask:
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    return task


@single_thread()
def train_rnn(
    task: SequenceTask,
    clipper: Clipper | Callable[..., ClipStep],
    *,
    lr: float,
    steps: int,
    hidden_size: int = 32,
    seed: int = 0,
    batch_size: int = 32,
    recurrent_scale: float = 1.0,
) -> TrainingHistory:
    """Train a :class:`TanhRNN` on ``task`` with SGD, clipping each gradient with ``clipper``.

    ``clipper`` is called once per step with the list of parameters after ``backward()``
    and must clip their ``.grad`` in place and return a :class:`ClipStep` (any
    :class:`Clipper`; a stateful, adaptive one sees the steps in order). Step ``k`` uses
    mini-batch ``task.batch(k, batch_size)``. The model's initial weights depend on
    ``seed`` only and the mini-batches on the step number only, so two calls that differ
    in ``clipper`` or ``lr`` see the same model and the same data. Returns one
    :class:`TrainingHistory` entry per step taken.
    """
    task = _check_task(task)
    if not callable(clipper):
        raise TypeError(f"clipper must be callable (a Clipper), got {type(clipper).__name__}")
    lr = check_positive(lr, "lr")
    steps = check_int(steps, "steps")
    hidden_size = check_int(hidden_size, "hidden_size")
    batch_size = check_int(batch_size, "batch_size")
    recurrent_scale = check_positive(recurrent_scale, "recurrent_scale")
    model = TanhRNN(
        task.input_size, hidden_size, task.output_size, seed=seed, recurrent_scale=recurrent_scale
    )
    params = list(model.parameters())
    losses: list[Tensor] = []
    records: list[ClipStep] = []
    applied: list[Tensor] = []
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
        applied.append(get_total_norm([p.grad for p in params]))
        if not torch.isfinite(loss.detach() + record.total_norm):  # the one sync per step
            diverged = True
            break
        with torch.no_grad():  # plain SGD, as torch.optim.SGD(params, lr) would do
            for p in params:
                p.add_(p.grad, alpha=-lr)
    return TrainingHistory(
        loss=torch.stack(losses).double().numpy(),
        grad_norm=torch.stack([r.total_norm for r in records]).double().numpy(),
        applied_norm=torch.stack(applied).double().numpy(),
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
    applied_norm: np.ndarray
    clipped: np.ndarray
    diverged: np.ndarray  # (M,) bool
    diverged_at: np.ndarray  # (M,) the step whose loss or norm was not finite, -1 if none
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # (M,) inits
    # Held-out scores (only with ``eval_task``): before the updates numbered ``eval_steps``
    # (the last entry is after the final update); ``(M, len(eval_steps))``, NaN once diverged.
    eval_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    eval_loss: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    eval_accuracy: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def final_loss(self) -> np.ndarray:
        """Mean loss over the last ``FINAL_WINDOW`` steps of each run; NaN where diverged."""
        return self.loss[:, -FINAL_WINDOW:].mean(axis=1)

    @property
    def clip_rate(self) -> np.ndarray:
        """Fraction of the steps each run took whose gradient was clipped, ``(M,)``."""
        taken = np.isfinite(self.loss).sum(axis=1)
        return self.clipped.sum(axis=1) / np.maximum(taken, 1)

    def run(self, index: int) -> TrainingHistory:
        """Run ``index`` as a :class:`TrainingHistory` (cut after its divergence step)."""
        end = self.loss.shape[1] if not self.diverged[index] else self.diverged_at[index] + 1
        return TrainingHistory(
            loss=self.loss[index, :end],
            grad_norm=self.grad_norm[index, :end],
            applied_norm=self.applied_norm[index, :end],
            threshold=np.full(end, self.thresholds[index]),
            clipped=self.clipped[index, :end],
            diverged=bool(self.diverged[index]),
            steps=self.loss.shape[1],
        )


@single_thread()
def train_many(
    task: SequenceTask,
    learning_rates: Sequence[float],
    methods: Sequence[str],
    thresholds: Sequence[float],
    *,
    steps: int,
    hidden_size: int = 32,
    seed: int = 0,
    batch_size: int = 32,
    recurrent_scale: float = 1.0,
    check_every: int = 25,
    seeds: Sequence[int] | None = None,
    momentum: float = 0.0,
    eval_task: SequenceTask | None = None,
    eval_every: int = 50,
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

    ``seeds[i]`` (default: ``seed`` for every run) gives run ``i`` the initial weights of
    ``TanhRNN(..., seed=seeds[i])``; the mini-batches stay the same for every run.
    ``momentum`` :math:`\mu > 0` turns SGD into heavy-ball SGD exactly as
    ``torch.optim.SGD(..., momentum=mu)`` does, on the clipped gradient:
    :math:`v \leftarrow \mu v + \hat g`, :math:`\theta \leftarrow \theta - \eta v`
    (``applied_norm`` stays the norm of :math:`\hat g`). With ``eval_task``, every run's
    mean loss and accuracy on all of ``eval_task`` are recorded before every
    ``eval_every``-th update and after the last one.
    """
    task = _check_task(task)
    steps = check_int(steps, "steps")
    hidden_size = check_int(hidden_size, "hidden_size")
    batch_size = check_int(batch_size, "batch_size")
    check_every = check_int(check_every, "check_every")
    eval_every = check_int(eval_every, "eval_every")
    recurrent_scale = check_positive(recurrent_scale, "recurrent_scale")
    if not (len(learning_rates) == len(methods) == len(thresholds) >= 1):
        raise ValueError(
            "learning_rates, methods and thresholds must have the same length >= 1, got "
            f"{len(learning_rates)}, {len(methods)}, {len(thresholds)}"
        )
    run_seeds = [seed] * len(learning_rates) if seeds is None else list(seeds)
    if len(run_seeds) != len(learning_rates):
        raise ValueError(
            f"seeds must hold one seed per run ({len(learning_rates)}), got {len(run_seeds)}"
        )
    if isinstance(momentum, bool) or not (
        isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0
    ):
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    if eval_task is not None:
        eval_task = _check_task(eval_task)
        if (eval_task.input_size, eval_task.output_size, eval_task.loss) != (
            task.input_size,
            task.output_size,
            task.loss,
        ):
            raise ValueError("eval_task must have the task's input size, output size and loss")
    lrs = [check_positive(lr, "learning_rates") for lr in learning_rates]
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"methods must each be one of {METHODS}, got {method!r}")
    for method, threshold in zip(methods, thresholds, strict=True):
        if method != "none":
            check_positive(threshold, "thresholds")
    m = len(lrs)
    threshold = torch.tensor(
        [
            math.inf if method == "none" else float(c)
            for method, c in zip(methods, thresholds, strict=True)
        ]
    )
    clippers = [_CLIPPERS[method](float(c)) for method, c in zip(methods, thresholds, strict=True)]
    rules = StackedClippers(clippers, steps)
    lr = torch.tensor(lrs)

    models = {
        s: TanhRNN(
            task.input_size, hidden_size, task.output_size, seed=s, recurrent_scale=recurrent_scale
        )
        for s in sorted(set(run_seeds))
    }
    weights = stacked_weights([models[s] for s in run_seeds])
    shapes = [(-1,) + (1,) * (w.ndim - 1) for w in weights]  # (M,) -> broadcast on a weight
    velocity = [torch.zeros_like(w) for w in weights] if momentum else None
    alive = torch.ones(m, dtype=torch.bool)
    losses = torch.full((steps, m), math.nan)
    norms = torch.full((steps, m), math.nan)
    applied_norms = torch.full((steps, m), math.nan)
    clipped = torch.zeros((steps, m), dtype=torch.bool)
    diverged_at = torch.full((m,), -1)
    eval_steps = [*range(0, steps, eval_every), steps] if eval_task is not None else []
    eval_scores: list[tuple[Tensor, Tensor]] = []

    def evaluate() -> None:
        loss, accuracy = stacked_scores(
            eval_task.loss, weights, eval_task.inputs, eval_task.targets
        )
        eval_scores.append(
            (torch.where(alive, loss, math.nan), torch.where(alive, accuracy, math.nan))
        )

    for step in range(steps):
        if eval_task is not None and step % eval_every == 0:
            evaluate()
        inputs, targets = task.batch(step, batch_size)
        loss, grads = stacked_loss_and_grads(task.loss, weights, inputs, targets)
        norm, _, clipped_now = rules(step, weights, grads)  # clips grads in place
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        diverged_at = torch.where(alive & ~finite, step, diverged_at)
        losses[step] = torch.where(alive, loss, math.nan)
        norms[step] = torch.where(alive, norm, math.nan)
        alive = alive & finite
        applied_norms[step] = torch.where(alive, stacked_norm(grads), math.nan)
        for k, (w, g, shape) in enumerate(zip(weights, grads, shapes, strict=True)):
            g = torch.where(alive.view(shape), g, 0.0)  # frozen once diverged
            if velocity is not None:
                g = velocity[k].mul_(momentum).add_(g)
            w -= lr.view(shape) * g  # SGD
        clipped[step] = alive & clipped_now
        if (step + 1) % check_every == 0 and not alive.any():
            break
    if eval_task is not None:
        while len(eval_scores) < len(eval_steps):  # after the last update (or an early end)
            evaluate()
    eval_loss, eval_accuracy = (
        torch.stack([scores[k] for scores in eval_scores], dim=1).double().numpy()
        if eval_scores
        else np.zeros((m, 0))
        for k in (0, 1)
    )
    return BatchedHistory(
        learning_rates=np.array(lrs),
        methods=tuple(methods),
        thresholds=threshold.double().numpy(),
        loss=losses.T.double().numpy(),
        grad_norm=norms.T.double().numpy(),
        applied_norm=applied_norms.T.double().numpy(),
        clipped=clipped.T.numpy(),
        diverged=(diverged_at >= 0).numpy(),
        diverged_at=diverged_at.numpy(),
        seeds=np.array(run_seeds),
        eval_steps=np.array(eval_steps, dtype=int),
        eval_loss=eval_loss,
        eval_accuracy=eval_accuracy,
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
