"""Training loops: histories record what happened, divergence stops a run, batched = single."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab.tasks import adding_problem, temporal_order
from clipping_lib.lab.threads import single_thread
from clipping_lib.lab.training import TanhRNN, train_grid, train_many, train_rnn
from clipping_lib.strategies import NoClip, NormClip, ValueClip

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


def test_each_run_starts_from_its_own_seed(task):
    batched = train_many(
        task, [0.2, 0.2], ["norm", "norm"], [0.3, 0.3], seeds=[0, 1], steps=20, **SMALL
    )
    for index, seed in enumerate((0, 1)):
        single = train_rnn(task, NormClip(0.3), lr=0.2, steps=20, seed=seed, **SMALL)
        np.testing.assert_allclose(batched.run(index).loss, single.loss, rtol=1e-4)
    assert batched.seeds.tolist() == [0, 1]
    assert not np.allclose(batched.loss[0], batched.loss[1])


@pytest.mark.parametrize(
    ("method", "threshold", "lr"), [("none", math.inf, 0.05), ("norm", 0.2, 0.3)]
)
def test_momentum_matches_torch_sgd_on_the_clipped_gradient(task, method, threshold, lr):
    """v <- mu v + g_hat, theta <- theta - lr v: torch.optim.SGD(momentum=mu) after clipping."""
    model = TanhRNN(task.input_size, 8, task.output_size, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(15):
        inputs, targets = task.batch(step, 16)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), threshold)
        optimizer.step()
        losses.append(loss.item())
    batched = train_many(task, [lr], [method], [threshold], steps=15, momentum=0.9, **SMALL)
    np.testing.assert_allclose(batched.loss[0], losses, rtol=1e-4)
    plain = train_many(task, [lr], [method], [threshold], steps=15, **SMALL)
    assert not np.allclose(plain.loss[0, 2:], losses[2:], rtol=1e-3)  # momentum mattered


def test_held_out_scores_are_the_models_loss_and_accuracy_at_those_steps():
    train = temporal_order(256, 10, seed=0)
    held_out = temporal_order(100, 10, seed=1)
    history = train_many(
        train,
        [0.5, 0.5],
        ["norm", "none"],
        [1.0, math.inf],
        seeds=[0, 3],
        steps=30,
        eval_task=held_out,
        eval_every=10,
        **SMALL,
    )
    assert history.eval_steps.tolist() == [0, 10, 20, 30]
    assert history.eval_loss.shape == history.eval_accuracy.shape == (2, 4)
    for index, seed in enumerate((0, 3)):
        logits = TanhRNN(held_out.input_size, 8, 4, seed=seed)(held_out.inputs)
        expected = torch.nn.functional.cross_entropy(logits, held_out.targets).item()
        assert history.eval_loss[index, 0] == pytest.approx(expected, rel=1e-5)
        accuracy = (logits.argmax(dim=1) == held_out.targets).double().mean().item()
        assert history.eval_accuracy[index, 0] == pytest.approx(accuracy)
    assert np.all((history.eval_accuracy >= 0) & (history.eval_accuracy <= 1))


def test_held_out_scores_of_a_diverged_run_are_nan():
    task = adding_problem(256, 10, seed=0)
    history = train_many(
        task,
        [50.0, 0.1],
        ["none", "norm"],
        [math.inf, 0.5],
        steps=40,
        eval_task=adding_problem(64, 10, seed=1),
        eval_every=20,
        **SMALL,
    )
    assert history.diverged.tolist() == [True, False]
    assert np.isnan(history.eval_loss[0, -1]) and np.isfinite(history.eval_loss[1]).all()
    assert np.isnan(history.eval_accuracy).all()  # accuracy means nothing for a regression


def test_clip_rate_counts_the_steps_each_run_took(task):
    history = train_many(task, [50.0, 0.1], ["none", "norm"], [math.inf, 1e-3], steps=40, **SMALL)
    assert history.clip_rate[0] == 0.0 and history.clip_rate[1] == 1.0


def test_bad_seeds_momentum_or_eval_task_are_refused(task):
    with pytest.raises(ValueError, match="seeds"):
        train_many(task, [0.1, 0.1], ["norm", "norm"], [1.0, 1.0], seeds=[0], steps=1)
    for momentum in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="momentum"):
            train_many(task, [0.1], ["norm"], [1.0], momentum=momentum, steps=1)
    with pytest.raises(ValueError, match="eval_task"):
        train_many(task, [0.1], ["norm"], [1.0], eval_task=temporal_order(64, 10), steps=1)
    with pytest.raises(TypeError, match="task"):
        train_many(task, [0.1], ["norm"], [1.0], eval_task="held out", steps=1)
