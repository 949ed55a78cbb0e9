"""clipping_lib.lab.loops: notebook 03's data, geometry and training loops.

Also holds the checks that were plumbing in the lesson (its mistakes table re-asserted
numbers already checked in their sections; the used-up generator's warning text).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from clipping_lib import clip_grad_norm_, get_total_norm
from clipping_lib.lab import loops


def test_the_data_is_fixed_and_one_direction_is_steep():
    x, y = loops.regression_data()
    assert torch.equal(x, loops.X) and torch.equal(y, loops.Y)
    assert x.shape == (256, 10) and y.shape == (256, 1)
    geometry = loops.quadratic_geometry()
    curvatures = geometry["curvatures"]
    assert 180 < curvatures[-1] < 200 and curvatures[-2] < 10  # one steep direction
    assert math.isclose(geometry["steep"].norm().item(), 1.0, rel_tol=1e-12)
    assert 0 < geometry["best_loss"] < 0.02  # noise 0.1: an MSE near 0.01


def test_the_small_model_and_helpers():
    model = loops.make_model()
    assert [p.shape for p in model.parameters()] == [(16, 10), (16,), (1, 16), (1,)]
    assert torch.equal(loops.flat(loops.make_model().parameters()), loops.flat(model.parameters()))
    loops.loss_of(model).backward()
    assert round(get_total_norm(loops.grads(model)).item(), 1) == 59.5  # what 03 prints


def test_a_clipped_run_above_two_over_the_curvature_stalls_and_below_converges():
    best = loops.quadratic_geometry()["best_loss"]
    stuck = loops.clipped_linear_run(0.02, 5.0, steps=400)
    stable = loops.clipped_linear_run(0.01, 5.0, steps=400)
    assert stuck["loss"][-1] > 10 * best and all(stuck["clipped"][-100:])
    assert all(abs(abs(s) - 0.05) < 0.01 for s in stuck["steep"][-20:])  # lr c / 2
    assert abs(stable["loss"][-1] / best - 1) < 0.05


def test_a_schedule_sets_the_learning_rate_and_threshold_per_step():
    seen = []
    loops.clipped_linear_run(0.02, 5.0, steps=3, schedule=lambda k: seen.append(k) or (0.0, 1.0))
    assert seen == [0, 1, 2]
    frozen = loops.clipped_linear_run(0.02, 5.0, steps=3, schedule=lambda k: (0.0, 1.0))
    assert frozen["loss"][0] == frozen["loss"][-1]  # lr 0: nothing moves


def test_micro_batches_are_sorted_and_equal():
    batches = loops.sorted_micro_batches(4)
    assert [len(x) for x, _ in batches] == [64] * 4
    assert batches[0][0][:, 0].max() <= batches[1][0][:, 0].min()
    with pytest.raises(ValueError, match="k must be a positive divisor of 256"):
        loops.sorted_micro_batches(3)


def test_per_step_weights_multiply_the_later_clips():
    assert loops.per_step_weights([0.5, 0.5, 1.0]) == [0.25, 0.5, 1.0]
    assert loops.per_step_weights([0.1]) == [1.0]
    with pytest.raises(ValueError, match="coefficients"):
        loops.per_step_weights([])


def _clip_in_step(optimizer, norms):
    def hook(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"]]
        norms.append(clip_grad_norm_(params, 1.0))

    return optimizer.register_step_pre_hook(hook)


def test_a_hand_written_hook_sees_the_loss_scale_with_a_fused_optimizer():
    plain = loops.fused_hook_step(False, _clip_in_step)
    fused = loops.fused_hook_step(True, _clip_in_step)
    assert abs(plain["measured"] / plain["true"] - 1) < 0.01
    assert abs(fused["measured"] / fused["true"] / fused["scale"] - 1) < 0.01
    assert fused["update"] < plain["update"] / 1000


@pytest.mark.parametrize("install", [None, _clip_in_step])
def test_unscale_first_or_the_recipe_fixes_it(install):
    unscale = install is not None
    step = loops.fused_hook_step(True, install, unscale_first=unscale)
    assert abs(step["measured"] / step["true"] - 1) < 0.01
    assert abs(step["update"] - 0.1) < 1e-3


def test_a_used_up_generator_clips_nothing_and_warns():
    model = loops.make_model()
    params = model.parameters()
    torch.optim.SGD(params, lr=0.1)  # consumes the generator
    loops.loss_of(model).backward()
    before = get_total_norm(loops.grads(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        returned = clip_grad_norm_(params, 1.0)
    assert returned.item() == 0.0 and torch.equal(get_total_norm(loops.grads(model)), before)
    assert caught and "empty generator" in str(caught[0].message)
