"""AutoClip, AGC and ZClip against direct reference implementations of each paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import clone_params, make_params
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.adaptive import AGC, AutoClip, ZClip, unitwise_norm

SHAPES = [(4, 3), (4,), (2, 3, 3, 3), (2,)]  # Linear weight/bias, Conv2d weight/bias


def spiky_norm_scales(steps: int, seed: int = 0) -> list[float]:
    """A gradient scale per step: mostly about 1, with a 30x spike every 10 steps."""
    rng = np.random.default_rng(seed)
    return [30.0 if k % 10 == 9 else float(rng.uniform(0.5, 1.5)) for k in range(steps)]


def set_grads(params, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * scale


def flat(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def reference_autoclip(params, history: list[float], percentile: float) -> float:
    """The authors' code: append the norm, take np.percentile, call clip_grad_norm_."""
    norm = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in params))
    history.append(norm)
    clip_value = float(np.percentile(history, percentile))
    torch.nn.utils.clip_grad_norm_(params, clip_value)
    return clip_value


@settings(max_examples=20, deadline=None)
@given(percentile=st.floats(0.5, 100.0), seed=st.integers(0, 1000))
def test_autoclip_matches_reference(percentile, seed):
    ours = make_params(SHAPES, seed=seed)
    theirs = clone_params(ours)
    clipper, history = AutoClip(percentile), []
    for k, scale in enumerate(spiky_norm_scales(25, seed)):
        set_grads(ours, scale, seed + k)
        set_grads(theirs, scale, seed + k)
        step = clipper(ours)
        threshold = reference_autoclip(theirs, history, percentile)
        # float32 interpolation between neighbours as large as the spikes: the error
        # scales with the largest norm, not with the threshold.
        tolerance = 1e-6 * max(history)
        assert step.threshold.item() == pytest.approx(threshold, rel=1e-5, abs=tolerance)
        if abs(history[-1] - threshold) > tolerance:  # a tie within rounding may go either way
            assert bool(step.clipped) == (history[-1] > threshold)
        torch.testing.assert_close(flat(ours), flat(theirs), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(clipper.history, torch.tensor(history), rtol=1e-6, atol=0)


def test_autoclip_threshold_is_the_percentile_of_all_norms_so_far():
    params = make_params([(10,)])
    clipper = AutoClip(50)
    for scale in [1.0, 2.0, 3.0, 100.0]:
        params[0].grad = torch.full((10,), scale / math.sqrt(10))
        step = clipper(params)
    assert step.threshold.item() == pytest.approx(2.5)  # median of 1, 2, 3, 100
    assert step.clipped and params[0].grad.norm().item() == pytest.approx(2.5, rel=1e-5)


def reference_agc(params, clipping: float, eps: float) -> None:
    """Brock et al. (2021), unit by unit with Python loops."""
    for p in params:
        w, g = p.detach(), p.grad
        units = [(slice(None),)] if w.ndim <= 1 else [(i,) for i in range(w.shape[0])]
        for unit in units:
            w_norm = max(float(w[unit].norm()), eps)
            g_norm = float(g[unit].norm())
            if g_norm / w_norm > clipping:
                g[unit] *= clipping * w_norm / max(g_norm, 1e-6)


@settings(max_examples=20, deadline=None)
@given(
    clipping=st.floats(0.01, 2.0),
    grad_scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 1000),
)
def test_agc_matches_reference(clipping, grad_scale, seed):
    ours = make_params(SHAPES, scale=grad_scale, seed=seed)
    theirs = clone_params(ours)
    before = flat(ours)
    clipper = AGC(clipping)
    step = clipper(ours)
    reference_agc(theirs, clipping, 1e-3)
    torch.testing.assert_close(flat(ours), flat(theirs), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(step.total_norm, torch.linalg.vector_norm(before))
    assert bool(step.clipped) == (not torch.equal(flat(ours), before))
    assert (clipper.clipped_fraction > 0) == step.clipped


def test_agc_units_follow_pytorch_layouts():
    linear, conv = torch.nn.Linear(3, 4), torch.nn.Conv2d(2, 5, 3)
    assert unitwise_norm(linear.weight).shape == (4, 1)  # one unit per output row
    assert unitwise_norm(conv.weight).shape == (5, 1, 1, 1)  # one unit per output channel
    assert unitwise_norm(linear.bias).shape == ()  # a bias is one unit
    by_channel = conv.weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(unitwise_norm(conv.weight).flatten(), by_channel)


def test_agc_clips_each_row_to_lambda_times_its_weight_norm():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # row norms 5 and 1
    weight.grad = torch.tensor([[0.0, 1.0], [0.0, 0.05]])  # ratios 0.2 and 0.05
    clipper = AGC(clipping=0.1)
    step = clipper([weight])
    torch.testing.assert_close(weight.grad, torch.tensor([[0.0, 0.5], [0.0, 0.05]]))
    assert step.clipped and clipper.clipped_fraction.item() == 0.5  # one row of two
    assert math.isinf(step.threshold.item())


def test_agc_eps_lets_zero_initialised_weights_move():
    bias = torch.nn.Parameter(torch.zeros(3))
    bias.grad = torch.ones(3)
    clipper = AGC(clipping=0.01, eps=1e-3)
    clipper([bias])
    assert bias.grad.norm().item() == pytest.approx(0.01 * 1e-3)
    assert clipper.clipped_fraction.item() == 1.0


class ReferenceZClip:
    """The authors' z-score mode with adaptive scaling, in Python floats."""

    def __init__(self, alpha: float, z_thresh: float, warmup_steps: int, eps: float = 1e-6):
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self.buffer: list[float] = []
        self.mean = self.var = None

    def step(self, params) -> bool:
        norm = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in params))
        if self.mean is None:
            self.buffer.append(norm)
            if len(self.buffer) == self.warmup_steps:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return False
        std = self.var**0.5
        z = (norm - self.mean) / (std + self.eps)
        target = norm
        if z > self.z_thresh:
            target = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
            for p in params:
                p.grad.mul_(target / (norm + 1e-6))
        self.mean = self.alpha * self.mean + (1 - self.alpha) * target
        self.var = self.alpha * self.var + (1 - self.alpha) * (target - self.mean) ** 2
        return z > self.z_thresh


@settings(max_examples=15, deadline=None)
@given(
    alpha=st.floats(0.5, 0.99),
    z_thresh=st.floats(1.0, 4.0),
    warmup=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_zclip_matches_reference(alpha, z_thresh, warmup, seed):
    ours = make_params(SHAPES, seed=seed)
    theirs = clone_params(ours)
    clipper, reference = (
        ZClip(alpha, z_thresh, warmup_steps=warmup),
        ReferenceZClip(alpha, z_thresh, warmup),
    )
    for k, scale in enumerate(spiky_norm_scales(30, seed)):
        set_grads(ours, scale, seed + k)
        set_grads(theirs, scale, seed + k)
        step = clipper(ours)
        assert bool(step.clipped) == reference.step(theirs)
        assert bool(step.clipped) == bool(step.total_norm > step.threshold)
        torch.testing.assert_close(flat(ours), flat(theirs), rtol=1e-4, atol=1e-6)
    assert clipper.mean.item() == pytest.approx(reference.mean, rel=1e-4)
    assert clipper.var.item() == pytest.approx(reference.var, rel=1e-3)


def test_zclip_warmup_clips_nothing_then_a_spike_lands_below_the_trigger():
    params = make_params([(100,)])
    clipper = ZClip(warmup_steps=10)
    for k, scale in enumerate([*spiky_norm_scales(10)[:9], 1.0]):
        set_grads(params, scale, k)
        step = clipper(params)
        assert not step.clipped and math.isinf(step.threshold.item())
    set_grads(params, 30.0, 99)
    step = clipper(params)
    assert step.clipped
    # The trigger is mu + z_thr sigma; the spike lands lower, at mu + z_thr^2 / z sigma.
    assert params[0].grad.norm() < step.threshold < step.total_norm


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: AutoClip(0), ValueError, r"percentile must be in \(0, 100\]"),
        (lambda: AutoClip(100.5), ValueError, "percentile"),
        (lambda: AutoClip(math.nan), ValueError, "percentile"),
        (lambda: AutoClip("50"), TypeError, "percentile"),
        (lambda: AutoClip(True), TypeError, "percentile"),
        (lambda: AutoClip(50, eps=-1), ValueError, "eps"),
        (lambda: AGC(-0.01), ValueError, "clipping must be a finite number > 0, got -0.01"),
        (lambda: AGC(0), ValueError, "clipping must be a finite number > 0, got 0.0"),
        (lambda: AGC(0.01, eps=0), ValueError, "eps must be a finite number > 0, got 0.0"),
        (lambda: AGC(math.inf), ValueError, "clipping must be a finite number > 0, got inf"),
        (lambda: ZClip(alpha=1.0), ValueError, r"alpha must be in \(0, 1\)"),
        (lambda: ZClip(alpha=0), ValueError, "alpha"),
        (lambda: ZClip(z_thresh=-1), ValueError, "z_thresh"),
        (lambda: ZClip(warmup_steps=0), ValueError, "warmup_steps must be >= 1"),
        (lambda: ZClip(warmup_steps=2.0), TypeError, "warmup_steps"),
    ],
)
def test_bad_input_is_rejected_by_name(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


@pytest.mark.parametrize("clipper", [AutoClip(10), AGC(0.01), ZClip(warmup_steps=2)], ids=repr)
def test_no_host_sync_in_a_step(clipper, monkeypatch):
    params = make_params(SHAPES)
    clipper(params)
    clipper(params)  # past ZClip's warm-up

    def sync(*_args, **_kwargs):
        raise AssertionError("host sync")

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    step = clipper(params)
    monkeypatch.undo()
    assert step.total_norm.ndim == step.threshold.ndim == step.clipped.ndim == 0


@pytest.mark.parametrize("clipper", [AutoClip(10), AGC(0.01), ZClip(warmup_steps=1)], ids=repr)
def test_parameters_without_grads_are_fine(clipper):
    params = make_params(SHAPES, grad_none=(1, 3))
    for _ in range(3):
        step = clipper(params)
    assert torch.isfinite(step.total_norm)
    empty = clipper([])
    assert torch.isnan(empty.total_norm) and not empty.has_grads and not empty.clipped


# --- issue 20, item 1: a step with no gradients is not a measurement ---


def _no_grad_then_real(clipper, no_grad_steps: int = 30, real_steps: int = 100):
    """``no_grad_steps`` calls with no .grad anywhere, then real gradients of norm 1..2;
    return the no-grad steps and the fraction of each real gradient's size kept."""
    p = torch.nn.Parameter(torch.zeros(4))
    empty = [clipper([p]) for _ in range(no_grad_steps)]
    rng = np.random.default_rng(0)
    kept = []
    for _ in range(real_steps):
        size = 1.0 + rng.random()
        p.grad = torch.full((4,), size / 2.0)  # norm = size
        clipper([p])
        kept.append(p.grad.norm().item() / size)
    return empty, np.array(kept)


@pytest.mark.parametrize(
    "make", [lambda: AutoClip(10, window=50), lambda: ZClip(warmup_steps=5), lambda: AGC(0.01)],
    ids=["AutoClip", "ZClip", "AGC"],
)
def test_steps_without_gradients_enter_no_statistic(make):
    clipper = make()
    empty, kept = _no_grad_then_real(clipper)
    assert all(not s.has_grads and torch.isnan(s.total_norm) and not s.clipped for s in empty)
    if not isinstance(clipper, AGC):  # AGC's units see weights of 0: it clips hard anyway
        assert kept.min() > 0.3  # before: 0.000 of their size kept, under both
        reference = make()
        _, kept_alone = _no_grad_then_real(reference, no_grad_steps=0)
        np.testing.assert_allclose(kept, kept_alone, rtol=1e-6)  # as if they never happened
        assert clipper.steps == reference.steps == 100


def test_a_step_without_gradients_reports_the_threshold_in_force():
    clipper, p = AutoClip(50, window=10), torch.nn.Parameter(torch.zeros(1))
    for n in (1.0, 2.0, 3.0):
        p.grad = torch.tensor([n])
        last = clipper([p])
    p.grad = None
    step = clipper([p])
    assert step.threshold == last.threshold == 2.0 and clipper.steps == 3
    z = ZClip(warmup_steps=2)
    assert z([p]).threshold == math.inf  # warming up: no threshold yet
