r"""Clipping methods compared over several seeds, trained at once: who ends lower, by how much.

:func:`train_together` trains ``M`` tanh RNNs (:class:`~clipping_lib.lab.training.TanhRNN`)
as one stacked program, on the lab's one engine for that (:mod:`clipping_lib.lab.stacked`:
weights of shape ``(M, ...)``, batched matrix products, backpropagation through time
written out for all runs at once). Run ``i`` has its own
task, initial weights (``seeds[i]``) and clipper, given as the library's own object
(``NoClip``, ``NormClip``, ``AutoClip``, ``AGC``, ``ZClip``, or
``ExceptReadout(AGC(...))``); :class:`~clipping_lib.lab.stacked.StackedClippers` applies
that clipper's rule to all runs of its kind at once, on ``(M,)`` tensors, so a clipper's
state is one row per run, with the library's clip-counting rule and non-finite policy. The tests
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

from clipping_lib._checks import check_int, check_positive
from clipping_lib.lab.stacked import (
    ExceptReadout,
    StackedClippers,
    stacked_loss_and_grads,
    stacked_norm,
    stacked_scores,
    stacked_weights,
)
from clipping_lib.lab.tasks import SequenceTask
from clipping_lib.lab.threads import single_thread
from clipping_lib.lab.training import TanhRNN, TrainingHistory
from clipping_lib.strategies import Clipper

__all__ = ["Comparison", "ExceptReadout", "compare_methods", "train_together"]

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
    return stacked_weights(
        [built[t.input_size, t.output_size, seed] for t, seed in zip(tasks, seeds, strict=True)]
    )


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
    rules = StackedClippers(clippers, steps)
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
            held_out = stacked_scores(test.loss, weights, test.inputs, test.targets)[0]
            eval_steps.append(step)
            test_loss.append(torch.where(alive, held_out, math.nan))
        if step == steps or not alive.any():
            break
        start = step * batch_size % n  # task.batch(step, batch_size) of every run
        inputs = all_inputs[:, start : start + batch_size][source]
        targets = all_targets[:, start : start + batch_size][source]
        loss, grads = stacked_loss_and_grads(tasks[0].loss, weights, inputs, targets)
        norm, threshold, clipped = rules(step, weights, grads)
        applied = stacked_norm(grads)
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
    baseline: float  # the trivial baseline's held-out loss (adding: adding_baseline_mse(T))

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
