"""Training loops: histories record what happened, divergence stops a run, batched = single."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.strategies import NoClip, NormClip, ValueClip
from clipping_lib.tasks import adding_problem, temporal_order
from clipping_lib.threads import single_thread
from clipping_lib.training import TanhRNN, train_grid, train_many, train_rnn

SMALL = {"hidden_size": 8, "batch_size": 16}


@pytest.fixture(scope="module")
def task():
    return adding_problem(256, 10, seed=0)


def test_unclipped_run_at_a_huge_lr_diverges_and_stops_cleanly(task):
    history = train_rnn(task, NoClip(), lr=50.0, steps=200, **SMALL)
    assert history.diverged
    assert history.steps_run < 200
    last = history.loss[-1] + history.grad_norm[-1]
    assert not np.isfinite(last)
    assert np.all(np.isfinite(history.loss[:-1]) & np.isfinite(history.grad_norm[:-1]))
    assert math.isnan(history.final_loss)


def test_norm_clipped_run_at_the_same_lr_survives_and_records_each_step(task):
    history = train_rnn(task, NormClip(0.05), lr=50.0, steps=60, **SMALL)
    assert not history.diverged and history.steps_run == 60
    np.testing.assert_array_equal(history.clipped, history.grad_norm > 0.05)
    np.testing.assert_array_equal(history.threshold, np.full(60, 0.05, dtype=np.float32))
    assert history.clip_rate == pytest.approx(np.mean(history.grad_norm > 0.05))
    assert np.all(history.applied_norm <= 0.05 * (1 + 1e-6))  # float32 rounding of 0.05
    np.testing.assert_allclose(history.applied_norm, np.minimum(history.grad_norm, 0.05), rtol=1e-4)


def test_each_sgd_step_moves_the_weights_by_lr_times_the_clipped_gradient(task):
    """One step by hand: clip_grad_norm_ then theta - lr * g, as train_rnn does."""
    model = TanhRNN(task.input_size, 8, task.output_size, seed=0)
    inputs, targets = task.batch(0, 16)
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    NormClip(0.01)(model.parameters())
    expected = [p.detach() - 0.5 * p.grad for p in model.parameters()]
    moved = torch.cat(
        [(e - p.detach()).flatten() for e, p in zip(expected, model.parameters(), strict=True)]
    )
    assert torch.linalg.vector_norm(moved).item() <= 0.5 * 0.01 * (1 + 1e-5)
    history = train_rnn(task, NormClip(0.01), lr=0.5, steps=2, **SMALL)
    assert history.loss[0] == pytest.approx(
        torch.nn.functional.mse_loss(
            TanhRNN(task.input_size, 8, task.output_size, seed=0)(inputs), targets
        ).item()
    )


def test_model_weights_depend_on_the_seed_only():
    a, b, c = (TanhRNN(2, 8, 1, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.rnn.weight_hh_l0, c.rnn.weight_hh_l0)
    big = TanhRNN(2, 128, 1, seed=0, recurrent_scale=1.5)
    radius = torch.linalg.eigvals(big.rnn.weight_hh_l0).abs().max().item()
    assert radius == pytest.approx(1.5, rel=0.1)


@pytest.mark.parametrize(
    ("method", "clipper", "threshold"),
    [("none", NoClip(), math.inf), ("norm", NormClip(0.3), 0.3), ("value", ValueClip(0.02), 0.02)],
)
def test_batched_runs_reproduce_single_runs(task, method, clipper, threshold):
    single = train_rnn(task, clipper, lr=0.2, steps=30, **SMALL)
    batched = train_many(task, [0.05, 0.2], ["norm", method], [1.0, threshold], steps=30, **SMALL)
    np.testing.assert_allclose(batched.run(1).loss, single.loss, rtol=1e-4)
    np.testing.assert_allclose(batched.run(1).grad_norm, single.grad_norm, rtol=1e-4)
    np.testing.assert_allclose(batched.run(1).applied_norm, single.applied_norm, rtol=1e-4)
    np.testing.assert_array_equal(batched.run(1).clipped, single.clipped)


def test_a_diverging_run_does_not_disturb_the_others(task):
    alone = train_many(task, [0.1], ["norm"], [0.5], steps=40, **SMALL)
    together = train_many(task, [50.0, 0.1], ["none", "norm"], [math.inf, 0.5], steps=40, **SMALL)
    assert together.diverged.tolist() == [True, False]
    stop = together.diverged_at[0]
    assert np.isfinite(together.loss[0, :stop]).all()
    assert np.isnan(together.loss[0, stop + 1 :]).all()
    np.testing.assert_allclose(together.loss[1], alone.loss[0], rtol=1e-5)
    assert len(together.run(0).loss) == stop + 1


def test_grid_shape_and_no_clipping_column(task):
    grid = train_grid(task, [0.1, 50.0], [0.05, math.inf], steps=40, **SMALL)
    assert grid.shape == (2, 2) and grid.final_loss.shape == (2, 2)
    assert grid.diverged.tolist() == [[False, False], [False, True]]
    assert grid.history.methods == ("norm", "none", "norm", "none")


def test_classification_task_trains_with_cross_entropy():
    task = temporal_order(256, 10, seed=0)
    history = train_rnn(task, NormClip(1.0), lr=0.5, steps=5, **SMALL)
    assert history.loss[0] == pytest.approx(math.log(4), rel=0.3)
    batched = train_many(task, [0.5], ["norm"], [1.0], steps=5, **SMALL)
    np.testing.assert_allclose(batched.loss[0], history.loss, rtol=1e-4)


def test_bad_input_is_refused_with_the_argument_named(task):
    with pytest.raises(TypeError, match="clipper"):
        train_rnn(task, 1.0, lr=0.1, steps=1)
    with pytest.raises(ValueError, match="lr"):
        train_rnn(task, NoClip(), lr=-0.1, steps=1)
    with pytest.raises(TypeError, match="steps"):
        train_rnn(task, NoClip(), lr=0.1, steps=1.5)
    with pytest.raises(TypeError, match="task"):
        train_rnn("adding", NoClip(), lr=0.1, steps=1)
    with pytest.raises(ValueError, match="methods"):
        train_many(task, [0.1], ["clip"], [1.0], steps=1)
    with pytest.raises(ValueError, match="same length"):
        train_many(task, [0.1, 0.2], ["norm"], [1.0], steps=1)
    with pytest.raises(ValueError, match="thresholds"):
        train_many(task, [0.1], ["norm"], [0.0], steps=1)
    with pytest.raises(ValueError, match="method"):
        train_grid(task, [0.1], [1.0], method="none", steps=1)


def test_one_thread_restores_the_thread_count_even_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), single_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
