"""The training-step recipes clip at the right moment and return the pre-clip norm."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib import recipes
from clipping_lib.clip import get_total_norm


def _model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 4) * 10
    y = torch.randn(16, 1) * 10
    return model, x, y


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def _closure(opt, model, x, y):
    """The closure ``optimizer.step(closure)`` calls: zero, forward, backward, the loss."""

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    return closure


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_clip_and_step_update_is_lr_times_clipped_gradient():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _loss(model, x, y).backward()
    expected_norm = get_total_norm([p.grad for p in model.parameters()])
    before = _flat(model)
    norm = recipes.clip_and_step(opt, model.parameters(), max_norm=1.0)
    assert norm == expected_norm and norm > 1.0
    step = torch.linalg.vector_norm(_flat(model) - before)
    assert step == pytest.approx(0.1 * 1.0, rel=1e-4)


def test_clip_and_step_skips_nonfinite_and_propagates_otherwise():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _loss(model, x, y).backward()
    next(model.parameters()).grad[0, 0] = math.inf
    before = _flat(model)
    norm = recipes.clip_and_step(opt, model.parameters(), 1.0, skip_nonfinite=True)
    assert math.isinf(norm) and torch.equal(_flat(model), before)
    recipes.clip_and_step(opt, model.parameters(), 1.0)
    assert torch.isnan(_flat(model)).any()


def test_grads_are_finite_detects_nan_and_inf_and_ignores_missing_grads():
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3,), 1e30)  # squared it would overflow float32; max-abs does not
    params[1].grad = torch.ones(3)
    assert recipes.grads_are_finite(params)
    params[1].grad[1] = math.nan
    assert not recipes.grads_are_finite(params)
    params[1].grad[1] = -math.inf
    assert not recipes.grads_are_finite(params)
    assert recipes.grads_are_finite([])


def test_amp_step_clips_the_unscaled_gradient():
    model, x, y = _model_and_batch()
    reference, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model, x, y)).backward()
    _loss(reference, x, y).backward()
    true_norm = get_total_norm([p.grad for p in reference.parameters()])
    before = _flat(model)
    norm = recipes.amp_clip_and_step(scaler, opt, model.parameters(), max_norm=1.0)
    assert norm == pytest.approx(true_norm.item(), rel=1e-5)
    assert torch.linalg.vector_norm(_flat(model) - before) == pytest.approx(0.1, rel=1e-4)


def test_amp_step_skips_on_overflow():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model, x, y)).backward()
    next(model.parameters()).grad[0, 0] = math.inf
    before = _flat(model)
    recipes.amp_clip_and_step(scaler, opt, model.parameters(), max_norm=1.0)
    assert torch.equal(_flat(model), before)
    assert scaler.get_scale() < 1024.0


def test_accumulation_matches_one_clipped_full_batch_step():
    model, x, y = _model_and_batch()
    full, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    full_opt = torch.optim.SGD(full.parameters(), lr=0.1)
    micro = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    params = list(model.parameters())
    norm = recipes.accumulate_and_step(lambda b: _loss(model, *b), micro, opt, params, 1.0)
    _loss(full, x, y).backward()
    full_norm = recipes.clip_and_step(full_opt, full.parameters(), 1.0)
    assert norm == pytest.approx(full_norm.item(), rel=1e-5)
    torch.testing.assert_close(_flat(model), _flat(full), rtol=1e-5, atol=1e-6)


def test_accumulation_rejects_no_micro_batches():
    model, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="micro_batches"):
        recipes.accumulate_and_step(lambda b: b, [], opt, model.parameters(), 1.0)


def test_pre_hook_clips_globally_before_step_and_records_norms():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms: list[torch.Tensor] = []
    handle = recipes.register_clip_pre_hook(opt, 1.0, norms=norms)
    _loss(model, x, y).backward()
    unclipped = get_total_norm([p.grad for p in model.parameters()])
    before = _flat(model)
    opt.step()
    assert len(norms) == 1 and norms[0] == unclipped
    assert torch.linalg.vector_norm(_flat(model) - before) == pytest.approx(0.1, rel=1e-4)
    handle.remove()
    opt.step()
    assert len(norms) == 1


def test_pre_hook_per_group_uses_each_groups_threshold():
    model, x, y = _model_and_batch()
    first, second = model[0], model[2]
    opt = torch.optim.SGD(
        [{"params": first.parameters(), "max_norm": 0.5}, {"params": second.parameters()}], lr=1.0
    )
    recipes.register_clip_pre_hook(opt, 2.0, per_group=True)
    _loss(model, x, y).backward()
    grads = [get_total_norm([p.grad for p in m.parameters()]) for m in (first, second)]
    assert min(grads) > 2.0  # both groups get clipped
    before = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (first, second)]
    opt.step()
    after = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (first, second)]
    steps = [torch.linalg.vector_norm(a - b).item() for a, b in zip(after, before, strict=True)]
    assert steps == pytest.approx([0.5, 2.0], rel=1e-4)


def test_pre_hook_rejects_bad_group_threshold():
    model, _, _ = _model_and_batch()
    opt = torch.optim.SGD([{"params": model.parameters(), "max_norm": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['max_norm'\]"):
        recipes.register_clip_pre_hook(opt, 1.0, per_group=True)


@settings(max_examples=25, deadline=None)
@given(clip_value=st.floats(0.01, 5.0), seed=st.integers(0, 1000))
def test_value_hooks_equal_clip_grad_value_after_one_backward(clip_value, seed):
    model, x, y = _model_and_batch(seed)
    twin, _, _ = _model_and_batch(seed)
    handles = recipes.register_value_clip_hooks(list(model.parameters()), clip_value)
    _loss(model, x, y).backward()
    _loss(twin, x, y).backward()
    torch.nn.utils.clip_grad_value_(twin.parameters(), clip_value)
    torch.testing.assert_close(_flat_grad(model), _flat_grad(twin), rtol=0, atol=0)
    for h in handles:
        h.remove()


def test_value_hooks_clamp_each_backward_separately():
    w = torch.nn.Parameter(torch.ones(3))
    recipes.register_value_clip_hooks([w], 1.0)
    x = torch.tensor([2.0, 3.0, 4.0])
    for _ in range(3):
        (w * x).sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 3.0))  # 3 passes x clamp 1, not clamp(27) = 1


def test_value_hooks_check_arguments():
    with pytest.raises(ValueError, match="does not require grad"):
        recipes.register_value_clip_hooks([torch.zeros(2)], 1.0)
    with pytest.raises(ValueError, match="clip_value"):
        recipes.register_value_clip_hooks([torch.nn.Parameter(torch.zeros(2))], -1.0)


def test_recipes_name_bad_arguments():
    model, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="optimizer"):
        recipes.clip_and_step("sgd", model.parameters(), 1.0)
    with pytest.raises(TypeError, match="scaler"):
        recipes.amp_clip_and_step(None, opt, model.parameters(), 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        recipes.register_clip_pre_hook(opt, math.nan)
    with pytest.raises(ValueError, match="norm_type"):
        recipes.register_clip_pre_hook(opt, 1.0, norm_type=0)


def test_pre_hook_under_grad_scaler_sees_unscaled_grads_and_skips_with_the_step():
    model, x, y = _model_and_batch()
    reference, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms: list[torch.Tensor] = []
    recipes.register_clip_pre_hook(opt, 1.0, norms=norms)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model, x, y)).backward()
    _loss(reference, x, y).backward()
    scaler.step(opt)  # unscales, then calls opt.step(), which runs the hook
    scaler.update()
    true_norm = get_total_norm([p.grad for p in reference.parameters()])
    assert len(norms) == 1 and norms[0].item() == pytest.approx(true_norm.item(), rel=1e-5)
    opt.zero_grad()
    scaler.scale(_loss(model, x, y)).backward()
    next(model.parameters()).grad[0, 0] = math.inf
    scaler.step(opt)  # overflow: the step is skipped, and the hook with it
    assert len(norms) == 1


def test_accumulation_weights_unequal_micro_batches_by_their_size():
    model, x, y = _model_and_batch()
    full, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    full_opt = torch.optim.SGD(full.parameters(), lr=0.1)
    micro = [(x[:3], y[:3]), (x[3:10], y[3:10]), (x[10:], y[10:])]  # 3, 7 and 6 examples
    params = list(model.parameters())
    norm = recipes.accumulate_and_step(lambda b: _loss(model, *b), micro, opt, params, 1.0)
    _loss(full, x, y).backward()
    full_norm = recipes.clip_and_step(full_opt, full.parameters(), 1.0)
    assert norm.item() == pytest.approx(full_norm.item(), rel=1e-5)
    torch.testing.assert_close(_flat(model), _flat(full), rtol=1e-5, atol=1e-6)


def test_accumulation_takes_sizes_for_batches_without_tensors():
    model, x, y = _model_and_batch()
    full, _, _ = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    full_opt = torch.optim.SGD(full.parameters(), lr=0.1)
    ranges = [range(0, 5), range(5, 16)]  # micro-batches given as index ranges

    def loss_of(r):
        return _loss(model, x[r.start : r.stop], y[r.start : r.stop])

    with pytest.raises(TypeError, match=r"sizes=\[...\]"):
        recipes.accumulate_and_step(loss_of, ranges, opt, model.parameters(), 1.0)
    with pytest.raises(ValueError, match="sizes"):
        recipes.accumulate_and_step(loss_of, ranges, opt, model.parameters(), 1.0, sizes=[5])
    recipes.accumulate_and_step(loss_of, ranges, opt, model.parameters(), 1.0, sizes=[5, 11])
    _loss(full, x, y).backward()
    recipes.clip_and_step(full_opt, full.parameters(), 1.0)
    torch.testing.assert_close(_flat(model), _flat(full), rtol=1e-5, atol=1e-6)


# --- issue 20: fused optimizers under a GradScaler, step(closure), several optimizers ---


def _fused_setup(fused_cls, **kwargs):
    w = torch.nn.Parameter(torch.ones(4))
    opt = fused_cls([w], fused=True, **kwargs)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])  # the true gradient, norm sqrt(30)
    return w, opt, g


def test_pre_hook_clips_the_true_gradient_of_a_fused_sgd_under_a_grad_scaler():
    w, opt, g = _fused_setup(torch.optim.SGD, lr=0.1)
    norms: list[torch.Tensor] = []
    recipes.register_clip_pre_hook(opt, 0.25, norms=norms)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((w * g).sum()).backward()
    before = w.detach().clone()
    scaler.step(opt)  # fused: the scaler hands the scale to the kernel, it does not unscale
    scaler.update()
    assert norms[0].item() == pytest.approx(30**0.5, rel=1e-6)  # the true norm, not 1024x
    assert torch.linalg.vector_norm(w.detach() - before).item() == pytest.approx(0.025, rel=1e-4)


def test_pre_hook_with_fused_adamw_under_a_grad_scaler_matches_unscaled_clipping():
    # Clipped to 0.25, the gradient's direction is kept; AdamW's first step is lr * sign,
    # so compare two steps against the same optimizer fed the clipped gradient directly.
    w, opt, g = _fused_setup(torch.optim.AdamW, lr=0.1)
    twin = torch.nn.Parameter(torch.ones(4))
    twin_opt = torch.optim.AdamW([twin], lr=0.1)
    recipes.register_clip_pre_hook(opt, 0.25)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for scale in (1.0, 3.0):
        opt.zero_grad()
        scaler.scale((w * g * scale).sum()).backward()
        scaler.step(opt)
        scaler.update()
        twin.grad = g * scale * min(1.0, 0.25 / (scale * 30**0.5 + 1e-6))
        twin_opt.step()
    torch.testing.assert_close(w.detach(), twin.detach(), rtol=1e-5, atol=1e-6)


def test_pre_hook_after_an_explicit_unscale_of_a_fused_optimizer():
    w, opt, g = _fused_setup(torch.optim.SGD, lr=0.1)
    norms: list[torch.Tensor] = []
    recipes.register_clip_pre_hook(opt, 0.25, norms=norms)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((w * g).sum()).backward()
    scaler.unscale_(opt)  # allowed for fused optimizers too: the kernel then does not unscale
    before = w.detach().clone()
    scaler.step(opt)
    assert norms[0].item() == pytest.approx(30**0.5, rel=1e-6)
    assert torch.linalg.vector_norm(w.detach() - before).item() == pytest.approx(0.025, rel=1e-4)


def test_pre_hook_under_a_grad_scaler_skips_an_overflowing_fused_step():
    w, opt, g = _fused_setup(torch.optim.SGD, lr=0.1)
    recipes.register_clip_pre_hook(opt, 0.25)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((w * g).sum()).backward()
    w.grad[0] = math.inf
    before = w.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w.detach(), before) and scaler.get_scale() < 1024.0


@pytest.mark.parametrize("as_keyword", [False, True])
def test_pre_hook_clips_the_gradient_the_closure_computes(as_keyword):
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms: list[torch.Tensor] = []
    recipes.register_clip_pre_hook(opt, 1.0, norms=norms)

    closure = _closure(opt, model, x, y)
    before = _flat(model)
    loss = opt.step(closure=closure) if as_keyword else opt.step(closure)
    assert torch.isfinite(loss) and len(norms) == 1 and norms[0] > 1.0
    assert torch.linalg.vector_norm(_flat(model) - before) == pytest.approx(0.1, rel=1e-4)


def test_pre_hook_clips_every_closure_evaluation_of_lbfgs():
    model, x, y = _model_and_batch()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    norms: list[torch.Tensor] = []
    recipes.register_clip_pre_hook(opt, 1.0, norms=norms)

    closure = _closure(opt, model, x, y)
    opt.step(closure)
    assert len(norms) >= 2  # LBFGS evaluates the closure once per inner iteration


def _two_optimizer_setup():
    model, x, y = _model_and_batch()
    first, second = model[0], model[2]
    opts = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (first, second)]
    return model, x, y, opts


def test_amp_step_with_two_optimizers_unscales_both_before_the_update():
    model, x, y, opts = _two_optimizer_setup()
    reference, _, _ = _model_and_batch()
    _loss(reference, x, y).backward()
    true_grads = _flat_grad(reference)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model, x, y)).backward()
    next(model.parameters()).grad[0, 0] = math.inf  # the first optimizer overflows
    before = _flat(model)
    norm = recipes.amp_clip_and_step(scaler, opts, model.parameters(), 1e9)
    assert math.isinf(norm) and scaler.get_scale() == 512.0  # lowered once
    assert torch.equal(_flat(model), before)  # a global norm of inf: both steps skipped
    second = torch.cat([p.grad.flatten() for p in model[2].parameters()])
    torch.testing.assert_close(second, true_grads[-len(second) :])  # unscaled once, not 2x
    for opt in opts:
        opt.zero_grad()
    scaler.scale(_loss(model, x, y)).backward()
    norm = recipes.amp_clip_and_step(scaler, opts, model.parameters(), 1.0)
    assert norm.item() == pytest.approx(true_grads.norm().item(), rel=1e-5)
    assert torch.linalg.vector_norm(_flat(model) - before) == pytest.approx(1.0, rel=1e-4)


def test_amp_step_names_a_bad_optimizer_in_a_list():
    model, _, _, opts = _two_optimizer_setup()
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(TypeError, match=r"optimizer\[1\]"):
        recipes.amp_clip_and_step(scaler, [opts[0], "adam"], model.parameters(), 1.0)
    with pytest.raises(ValueError, match="optimizer"):
        recipes.amp_clip_and_step(scaler, [], model.parameters(), 1.0)


def test_accumulation_refuses_parameters_the_optimizer_does_not_own():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # the last layer is not stepped
    micro = [(x[:8], y[:8]), (x[8:], y[8:])]
    with pytest.raises(ValueError, match=r"parameters\[2\] is not among the optimizer"):
        recipes.accumulate_and_step(lambda b: _loss(model, *b), micro, opt, model.parameters(), 1.0)
    assert all(p.grad is None for p in model.parameters())  # refused before any backward


def test_value_hooks_refuse_a_clip_value_beyond_the_parameters_dtype():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"clip_value=100000.*parameters\[0\].*float16"):
        recipes.register_value_clip_hooks([w], 1e5)
    handles = recipes.register_value_clip_hooks([w], math.inf)  # inf: no clamp, allowed
    (w * 2).sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 2.0, dtype=torch.float16))
    for h in handles:
        h.remove()
