"""compare: the batched trainer reproduces train_rnn with the library's clippers; paired stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.lab.compare import (
    Comparison,
    ExceptReadout,
    Paired,
    compare_methods,
    train_together,
)
from clipping_lib.lab.spikes import with_target_spikes
from clipping_lib.lab.stacked import WithMaxNorm
from clipping_lib.lab.tasks import adding_problem
from clipping_lib.lab.training import TanhRNN, task_loss, train_rnn
from clipping_lib.strategies import NoClip, NormClip, ValueClip

SMALL = {"lr": 0.1, "hidden_size": 8, "batch_size": 16}


@pytest.fixture(scope="module")
def spiky():
    """60 batches of 16, with outliers (x 30) in 3 batches after step 30 (ZClip's warm-up is 25)."""
    clean = adding_problem(60 * 16, 8, seed=3)
    return with_target_spikes(clean, batch_size=16, n_spikes=3, first_step=30, scale=30.0)[0]


CLIPPERS = [
    NoClip,
    lambda: NormClip(0.5),
    lambda: ValueClip(0.05),
    lambda: AutoClip(10),
    lambda: AutoClip(50, window=7),
    lambda: AGC(0.05),
    lambda: ExceptReadout(AGC(0.05)),
    lambda: ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=10),
    lambda: WithMaxNorm(ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=10), 0.5),
]


@pytest.mark.parametrize("make", CLIPPERS, ids=lambda make: repr(make()))
def test_each_run_reproduces_train_rnn_with_the_library_clipper(spiky, make):
    other = adding_problem(60 * 16, 8, seed=4)  # a second run beside it, other data and seed
    together = train_together(
        [spiky, other], [make(), make()], [0, 1], test=adding_problem(32, 8), steps=60, **SMALL
    )
    for history, task, seed in zip(together.histories, (spiky, other), (0, 1), strict=True):
        single = train_rnn(task, make(), steps=60, seed=seed, **SMALL)
        assert history.steps_run == single.steps_run and history.diverged == single.diverged
        np.testing.assert_allclose(history.loss, single.loss, rtol=1e-4)
        np.testing.assert_allclose(history.grad_norm, single.grad_norm, rtol=1e-4)
        np.testing.assert_allclose(history.applied_norm, single.applied_norm, rtol=1e-4)
        np.testing.assert_allclose(history.threshold, single.threshold, rtol=1e-4)
        np.testing.assert_array_equal(history.clipped, single.clipped)


def test_held_out_loss_is_measured_on_the_test_set_and_nan_after_divergence():
    task, test = adding_problem(40 * 16, 8, seed=0), adding_problem(64, 8, seed=9)
    result = train_together(
        [task, task], [NoClip(), NoClip()], [0, 0], test=test, steps=40, eval_every=10,
        lr=1e-3, hidden_size=8, batch_size=16,
    )  # fmt: skip
    np.testing.assert_array_equal(result.eval_steps, [0, 10, 20, 30, 40])
    model = TanhRNN(task.input_size, 8, task.output_size, seed=0)
    initial = task_loss(test, model(test.inputs), test.targets).item()
    assert result.test_loss[0, 0] == pytest.approx(initial, rel=1e-5)
    blown = train_together(
        [task], [NoClip()], [0], test=test, steps=40, eval_every=5, lr=50.0, hidden_size=8,
        batch_size=16,
    )  # fmt: skip
    history = blown.histories[0]
    assert history.diverged and history.steps_run < 40
    after = blown.eval_steps >= history.steps_run
    assert np.isnan(blown.test_loss[0, after]).all()
    assert np.isfinite(blown.test_loss[0, ~after]).all()


def test_except_readout_leaves_the_readout_gradient_alone():
    task = adding_problem(32, 6, seed=0)
    model = TanhRNN(task.input_size, 8, task.output_size, seed=0)
    task_loss(task, model(task.inputs[:16]), 30 * task.targets[:16]).backward()
    before = [p.grad.clone() for p in model.parameters()]
    twin = TanhRNN(task.input_size, 8, task.output_size, seed=0)
    for p, g in zip(twin.parameters(), before, strict=True):
        p.grad = g.clone()
    step = ExceptReadout(AGC(0.01))(model.parameters())
    AGC(0.01)(list(twin.parameters())[:4])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(model.readout.weight.grad, before[4])
    assert bool(step.clipped)
    with pytest.raises(ValueError, match="6 tensors"):
        ExceptReadout(AGC(0.01))(list(model.parameters())[:5])
    with pytest.raises(TypeError, match="clipper"):
        ExceptReadout("AGC")


def test_paired_statistics():
    paired = Paired(np.array([0.1, 0.3, -0.1, 0.3]))
    assert paired.n == 4 and paired.mean == pytest.approx(0.15) and paired.wins == 1
    assert paired.sd == pytest.approx(np.std([0.1, 0.3, -0.1, 0.3], ddof=1))
    assert paired.t == pytest.approx(0.15 / (paired.sd / 2))


def test_compare_methods_pairs_methods_by_seed_and_summarises():
    def make_task(seed):
        return adding_problem(30 * 16, 6, seed=seed)

    comparison = compare_methods(
        make_task, {"none": NoClip, "fixed": lambda: NormClip(0.2)}, [3, 5],
        test=adding_problem(64, 6, seed=99), baseline=1 / 6, steps=30, eval_every=10, **SMALL,
    )  # fmt: skip
    assert isinstance(comparison, Comparison) and comparison.final_loss.shape == (2, 2)
    single = train_rnn(make_task(5), NormClip(0.2), steps=30, seed=5, **SMALL)
    np.testing.assert_allclose(comparison.run("fixed", 5).loss, single.loss, rtol=1e-4)
    difference = comparison.final("none") - comparison.final("fixed")
    np.testing.assert_allclose(comparison.paired("none", "fixed").differences, difference)
    table = comparison.table(reference="fixed")
    assert "none" in table and "trivial baseline" in table and "0.1667" in table
    assert not comparison.diverged.any()


def test_bad_input():
    task, test = adding_problem(64, 6), adding_problem(16, 6)
    kwargs = {"test": test, "lr": 0.1, "steps": 2, "batch_size": 16}
    with pytest.raises(ValueError, match="same length"):
        train_together([task], [NoClip(), NoClip()], [0], **kwargs)
    with pytest.raises(TypeError, match="clippers must be"):
        train_together([task], [ExceptReadout(NormClip(1.0))], [0], **kwargs)
    used = AutoClip(10)
    train_rnn(task, used, lr=0.1, steps=1, batch_size=16)
    with pytest.raises(ValueError, match="fresh"):
        train_together([task], [used], [0], **kwargs)
    with pytest.raises(ValueError, match="same number of sequences"):
        train_together([task, adding_problem(32, 6)], [NoClip(), NoClip()], [0, 0], **kwargs)
    with pytest.raises(ValueError, match="test must"):
        train_together([task], [NoClip()], [0], **{**kwargs, "test": adding_problem(16, 7)})
    with pytest.raises(TypeError, match="SequenceTask"):
        train_together(["adding"], [NoClip()], [0], **kwargs)
    with pytest.raises(ValueError, match="data_for"):
        compare_methods(lambda s: task, {"a": NoClip}, [0], baseline=1.0, data_for={"b": None},
                        **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match="seeds"):
        compare_methods(lambda s: task, {"a": NoClip}, [0, 0], baseline=1.0, **kwargs)
