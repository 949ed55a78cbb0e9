r"""Gradient spikes on demand: a sequence task whose mini-batches now and then carry outliers.

Large models see sudden gradient spikes, often from a few bad examples in one batch.
:func:`with_target_spikes` reproduces that in a small seeded task: it takes a
:class:`~clipping_lib.lab.tasks.SequenceTask` with one fresh mini-batch per training step,
picks ``n_spikes`` steps at or after ``first_step``, and multiplies the targets of
``bad_examples`` examples of each of those batches by ``scale``. With a mean squared
error the gradient of those examples grows about ``scale``-fold, so the norm of the
batch gradient jumps at exactly those steps, and nowhere else by construction.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from clipping_lib._checks import check_int, check_threshold
from clipping_lib.lab.tasks import SequenceTask, adding_problem

__all__ = ["spiky_adding_task", "with_target_spikes"]


def with_target_spikes(
    task: SequenceTask,
    *,
    batch_size: int,
    n_spikes: int = 8,
    first_step: int = 50,
    last_step: int | None = None,
    bad_examples: int = 4,
    scale: float = 30.0,
    seed: int = 0,
) -> tuple[SequenceTask, np.ndarray]:
    """A copy of ``task`` with outlier targets in ``n_spikes`` batches; and those steps.

    Step ``k`` of a training loop that calls ``task.batch(k, batch_size)`` sees batch
    ``k``, as long as ``k < task.n // batch_size`` (each batch is used once). The spike
    steps are drawn uniformly without replacement from ``[first_step, last_step)``
    (``last_step`` defaults to ``task.n // batch_size``), sorted.
    """
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    if task.loss != "mse":
        raise ValueError(f"task must be a regression (loss 'mse'), got {task.loss!r}")
    batch_size = check_int(batch_size, "batch_size", 1)
    n_spikes = check_int(n_spikes, "n_spikes", 0)
    first_step = check_int(first_step, "first_step", 0)
    bad_examples = check_int(bad_examples, "bad_examples", 1)
    scale = check_threshold(scale, "scale")
    if bad_examples > batch_size:
        raise ValueError(f"bad_examples must be <= batch_size = {batch_size}, got {bad_examples}")
    n_batches = task.n // batch_size
    last_step = n_batches if last_step is None else check_int(last_step, "last_step", 0)
    if last_step > n_batches:
        raise ValueError(f"last_step must be <= the {n_batches} batches of task, got {last_step}")
    if n_spikes > last_step - first_step:
        raise ValueError(
            f"cannot place {n_spikes} spikes in steps [{first_step}, {last_step}): "
            "use a larger task, a wider range of steps or fewer spikes"
        )
    generator = torch.Generator().manual_seed(seed)
    steps = first_step + torch.randperm(last_step - first_step, generator=generator)[:n_spikes]
    steps = steps.sort().values
    targets = task.targets.clone()
    for step in steps.tolist():
        rows = step * batch_size + torch.randperm(batch_size, generator=generator)[:bad_examples]
        targets[rows] *= scale
    return dataclasses.replace(task, targets=targets), steps.numpy()


def spiky_adding_task(
    steps: int = 1500,
    batch_size: int = 32,
    length: int = 10,
    *,
    n_spikes: int = 24,
    scale: float = 3000.0,
    quiet_end: int = 300,
    seed: int = 0,
) -> tuple[SequenceTask, np.ndarray]:
    """Notebook 07's data: an adding problem with one batch per step and ``n_spikes`` spikes.

    ``adding_problem(steps * batch_size, length, seed=seed)`` with :func:`with_target_spikes`
    (4 of the ``batch_size`` targets of each spike batch multiplied by ``scale``, spikes in
    steps ``[50, steps - quiet_end)``: the last ``quiet_end`` steps are clean, so a final
    loss measures the damage that lasts, not the last spike's passing bump). The same
    ``seed`` without spikes is ``adding_problem(steps * batch_size, length, seed=seed)``.
    """
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    task = adding_problem(steps * batch_size, length, seed=seed)
    quiet_end = check_int(quiet_end, "quiet_end", 0)
    return with_target_spikes(
        task, batch_size=batch_size, n_spikes=n_spikes, last_step=steps - quiet_end,
        scale=scale, seed=seed,
    )  # fmt: skip
