r"""Gradient spikes on demand: a sequence task whose mini-batches now and then carry outliers.

Large models see sudden gradient spikes, often from a few bad examples in one batch.
:func:`with_target_spikes` reproduces that in a small seeded task: it takes a
:class:`~clipping_lib.tasks.SequenceTask` with one fresh mini-batch per training step,
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
from clipping_lib.tasks import SequenceTask, adding_problem

__all__ = ["spiky_adding_task", "with_target_spikes"]


def with_target_spikes(
    task: SequenceTask,
    *,
    batch_size: int,
    n_spikes: int = 8,
    first_step: int = 50,
    bad_examples: int = 4,
    scale: float = 30.0,
    seed: int = 0,
) -> tuple[SequenceTask, np.ndarray]:
    """A copy of ``task`` with outlier targets in ``n_spikes`` batches; and those steps.

    Step ``k`` of a training loop that calls ``task.batch(k, batch_size)`` sees batch
    ``k``, as long as ``k < task.n // batch_size`` (each batch is used once). The spike
    steps are drawn uniformly from ``[first_step, task.n // batch_size)``, sorted.
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
    if n_spikes > n_batches - first_step:
        raise ValueError(
            f"cannot place {n_spikes} spikes in steps [{first_step}, {n_batches}): "
            "use a larger task, an earlier first_step or fewer spikes"
        )
    generator = torch.Generator().manual_seed(seed)
    steps = first_step + torch.randperm(n_batches - first_step, generator=generator)[:n_spikes]
    steps = steps.sort().values
    targets = task.targets.clone()
    for step in steps.tolist():
        rows = step * batch_size + torch.randperm(batch_size, generator=generator)[:bad_examples]
        targets[rows] *= scale
    return dataclasses.replace(task, targets=targets), steps.numpy()


def spiky_adding_task(
    steps: int = 300, batch_size: int = 32, length: int = 20, *, seed: int = 0
) -> tuple[SequenceTask, np.ndarray]:
    """The run of notebook 07: an adding problem with one batch per step and 8 spikes.

    ``adding_problem(steps * batch_size, length)`` with :func:`with_target_spikes`
    defaults (4 of 32 targets x 30 in 8 batches at or after step 50).
    """
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    task = adding_problem(steps * batch_size, length, seed=seed)
    return with_target_spikes(task, batch_size=batch_size, seed=seed)
