"""with_target_spikes: outliers exactly in the chosen batches, nowhere else."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.spikes import spiky_adding_task, with_target_spikes
from clipping_lib.lab.tasks import adding_problem, temporal_order


def test_outliers_only_in_the_spike_batches():
    task = adding_problem(32 * 100, 10, seed=1)
    spiky, steps = with_target_spikes(task, batch_size=32, n_spikes=5, first_step=20, seed=3)
    assert len(steps) == 5 and steps.min() >= 20 and steps.max() < 100
    assert list(steps) == sorted(steps)
    changed = (spiky.targets != task.targets).flatten().nonzero().flatten()
    assert sorted(set((changed // 32).tolist())) == sorted(steps.tolist())
    assert len(changed) == 5 * 4
    torch.testing.assert_close(spiky.targets[changed], 30 * task.targets[changed])
    assert torch.equal(spiky.inputs, task.inputs)


def test_spiky_adding_task_default():
    """Notebook 07's data: 24 spikes of x 3000 in [50, 1200), clean otherwise."""
    task, steps = spiky_adding_task()
    assert task.n == 1500 * 32 and len(steps) == 24 and steps.min() >= 50 and steps.max() < 1200
    clean = adding_problem(1500 * 32, 10, seed=0)
    changed = (task.targets != clean.targets).flatten().nonzero().flatten()
    assert set((changed // 32).tolist()) == set(steps.tolist())
    torch.testing.assert_close(task.targets[changed], 3000 * clean.targets[changed])


def test_last_step_bounds_the_spikes():
    task = adding_problem(32 * 100, 5, seed=2)
    _, steps = with_target_spikes(task, batch_size=32, n_spikes=10, first_step=20, last_step=30)
    assert sorted(steps.tolist()) == list(range(20, 30))
    with pytest.raises(ValueError, match="last_step"):
        with_target_spikes(task, batch_size=32, n_spikes=1, last_step=101)
    with pytest.raises(ValueError, match="cannot place"):
        with_target_spikes(task, batch_size=32, n_spikes=11, first_step=20, last_step=30)


def test_bad_input():
    task = adding_problem(64, 5)
    with pytest.raises(ValueError, match="cannot place"):
        with_target_spikes(task, batch_size=32, n_spikes=3, first_step=0)
    with pytest.raises(ValueError, match="bad_examples"):
        with_target_spikes(task, batch_size=2, bad_examples=3, n_spikes=1, first_step=0)
    with pytest.raises(ValueError, match="regression"):
        with_target_spikes(temporal_order(64, 10), batch_size=32, n_spikes=1, first_step=0)
    with pytest.raises(TypeError, match="task"):
        with_target_spikes("adding", batch_size=32)
    with pytest.raises(ValueError, match="scale"):
        with_target_spikes(task, batch_size=32, n_spikes=1, first_step=0, scale=-1.0)
