"""The synthetic long-range tasks: targets follow the definitions, seeds reproduce."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.lab.tasks import (
    ADDING_BASELINE_MSE,
    TEMPORAL_ORDER_CHANCE_CE,
    adding_baseline_mse,
    adding_problem,
    make_task,
    temporal_order,
)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(2, 60), seed=st.integers(0, 2**31 - 1))
def test_adding_target_is_the_sum_of_the_two_marked_values(length, seed):
    task = adding_problem(64, length, seed=seed)
    values, markers = task.inputs[..., 0], task.inputs[..., 1]
    assert task.inputs.shape == (64, length, 2) and task.targets.shape == (64, 1)
    assert torch.all(markers.sum(dim=1) == 2)
    half = length // 2
    assert torch.all(markers[:, :half].sum(dim=1) == 1)  # one marker in each half
    assert torch.all(markers[:, half:].sum(dim=1) == 1)
    for row in range(64):
        marked = values[row][markers[row] == 1]
        assert task.targets[row, 0].item() == pytest.approx(marked.sum().item(), abs=1e-6)
    assert torch.all((values >= 0) & (values < 1))


def test_adding_baseline_is_the_variance_of_the_target():
    task = adding_problem(200_000, 10, seed=1)
    assert task.targets.var().item() == pytest.approx(ADDING_BASELINE_MSE, rel=0.02)
    assert task.targets.mean().item() == pytest.approx(1.0, abs=0.01)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(10, 80), seed=st.integers(0, 2**31 - 1))
def test_temporal_order_class_is_the_ordered_pair_of_relevant_symbols(length, seed):
    task = temporal_order(64, length, seed=seed)
    assert task.inputs.shape == (64, length, 6) and task.targets.shape == (64,)
    assert torch.all(task.inputs.sum(dim=2) == 1)  # one-hot
    symbols = task.inputs.argmax(dim=2)
    window = length // 10
    for row in range(64):
        (relevant,) = torch.nonzero(symbols[row] < 2, as_tuple=True)
        assert len(relevant) == 2
        first, second = relevant.tolist()
        assert window <= first < 2 * window and 5 * window <= second < 6 * window
        expected = 2 * symbols[row, first] + symbols[row, second]
        assert task.targets[row].item() == expected.item()


def test_temporal_order_classes_are_balanced_and_chance_is_log4():
    task = temporal_order(40_000, 20, seed=3)
    counts = torch.bincount(task.targets, minlength=4).float() / task.n
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.01)
    assert TEMPORAL_ORDER_CHANCE_CE == pytest.approx(math.log(4))


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (adding_problem(32, 20, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_batches_cycle_in_a_fixed_order():
    task = make_task("adding", 100, 10, seed=0)
    inputs, targets = task.batch(0, 32)
    assert torch.equal(inputs, task.inputs[:32]) and torch.equal(targets, task.targets[:32])
    assert torch.equal(task.batch(3, 32)[0], inputs)  # 100 // 32 = 3 batches, then again
    assert torch.equal(task.batch(1, 32)[0], task.inputs[32:64])


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="length"):
        adding_problem(10, 1)
    with pytest.raises(ValueError, match="length"):
        temporal_order(10, 9)
    with pytest.raises(TypeError, match="n must be an int"):
        adding_problem(10.0, 20)
    with pytest.raises(ValueError, match="name"):
        make_task("copying", 10, 20)
    with pytest.raises(ValueError, match="batch_size"):
        adding_problem(10, 20).batch(0, 11)


@pytest.mark.parametrize("length", [2, 5, 10, 11, 40])
def test_adding_baseline_is_the_error_of_the_best_marker_free_answer(length):
    """Monte Carlo: the sum of the two half-means scores (1 - 2/T)/6 (even T), and no
    marker-free answer does better: a least-squares fit on the values alone scores no less."""
    task = adding_problem(200_000, length, seed=2)
    values, targets = task.inputs[..., 0].double(), task.targets[:, 0].double()
    half = length // 2
    half_means = values[:, :half].mean(dim=1) + values[:, half:].mean(dim=1)
    mse = ((half_means - targets) ** 2).mean().item()
    assert mse == pytest.approx(adding_baseline_mse(length), rel=0.02)
    features = torch.cat([values, torch.ones(len(values), 1, dtype=torch.float64)], dim=1)
    fit = torch.linalg.lstsq(features, targets[:, None]).solution
    best_linear = ((features @ fit)[:, 0] - targets).pow(2).mean().item()
    assert best_linear == pytest.approx(mse, rel=0.02)
    if length % 2 == 0:
        assert adding_baseline_mse(length) == pytest.approx((1 - 2 / length) / 6, rel=1e-12)
    assert adding_baseline_mse(length) < ADDING_BASELINE_MSE
    with pytest.raises(ValueError, match="length"):
        adding_baseline_mse(1)
