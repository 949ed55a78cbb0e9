"""Fault injection: NaN/inf gradients at every phase of each clipper, fp16 autocast with a
GradScaler on CPU, fp16/bf16 models, checkpoint and resume, long runs, odd inputs.

The library's policy (clipping_lib.strategies): a non-finite global norm never enters a
statistic; the step's gradients are scaled as ``clip_grad_norm_`` scales them, so they
stay non-finite and a GradScaler skips the step; the threshold stays finite.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.adaptive import AGC, AutoClip, ZClip, nan_percentile
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import NoClip, NormClip, ValueClip

NAN, INF = math.nan, math.inf


def one_norm_param(dtype=torch.float64) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(2, dtype=dtype))


def feed(clipper, p, norm: float):
    """Give ``p`` a gradient of global norm ``norm`` (NaN/inf: one bad element) and clip."""
    if math.isfinite(norm):
        p.grad = torch.tensor([norm * 0.6, norm * 0.8], dtype=p.dtype)
    else:
        p.grad = torch.tensor([norm, 1.0], dtype=p.dtype)
    return clipper([p])


def adaptive_clippers():
    return [AutoClip(25, window=None), AutoClip(25), ZClip(0.9, 2.0, warmup_steps=5)]


# ---------------------------------------------------------------------------------------
# A non-finite norm never enters a statistic
# ---------------------------------------------------------------------------------------

norms = st.lists(st.floats(0.1, 10.0), min_size=12, max_size=40)
faults = st.lists(st.tuples(st.integers(0, 45), st.sampled_from([NAN, INF])), max_size=8)


@settings(max_examples=40, deadline=None)
@given(clean=norms, bad=faults, which=st.integers(0, 2))
def test_non_finite_steps_leave_the_statistics_as_if_they_never_happened(clean, bad, which):
    """Warm-up, after it, repeated: the finite steps see exactly the clean run's thresholds."""
    mixed = list(clean)
    for position, value in sorted(bad, reverse=True):
        mixed.insert(min(position, len(mixed)), value)
    faulty, reference = adaptive_clippers()[which], adaptive_clippers()[which]
    p, q = one_norm_param(), one_norm_param()
    expected = iter([(feed(reference, q, n), q.grad.clone()) for n in clean])
    seen_finite = False
    for n in mixed:
        step = feed(faulty, p, n)
        if math.isfinite(n):
            seen_finite = True
            want, grad = next(expected)
            assert torch.equal(step.threshold, want.threshold)
            assert torch.equal(step.clipped, want.clipped)
            assert torch.equal(p.grad, grad)
        else:
            assert not step.clipped  # a non-finite step is not "clipped"
            assert not torch.isfinite(p.grad).all()  # the scaler still sees the overflow
            if isinstance(faulty, AutoClip) and seen_finite:
                assert torch.isfinite(step.threshold)


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize(
    "make",
    [lambda: NormClip(1.0), lambda: AutoClip(10), lambda: ZClip(warmup_steps=3), lambda: AGC(0.01)],
    ids=["NormClip", "AutoClip", "ZClip", "AGC"],
)
def test_non_finite_gradients_are_scaled_as_clip_grad_norm_scales_them(make, bad):
    clipper = make()
    params = [torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2))]
    for phase in range(6):  # the first step, warm-up, after warm-up
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        if phase in (0, 2, 5):
            params[0].grad[1, 1] = bad
        reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for r, p in zip(reference, params, strict=True):
            r.grad = p.grad.clone()
        step = clipper(params)
        if phase in (0, 2, 5):
            torch.nn.utils.clip_grad_norm_(reference, 1.0)  # any finite max_norm: same result
            for r, p in zip(reference, params, strict=True):
                torch.testing.assert_close(p.grad, r.grad, equal_nan=True, rtol=0, atol=0)
            assert not step.clipped


@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_spike_after_non_finite_steps_is_still_clipped(bad):
    """Issue 11, items 1 and 2: one bad norm used to switch AutoClip/ZClip off for good."""
    for clipper in adaptive_clippers():
        p = one_norm_param(torch.float32)
        for k in range(30):
            feed(clipper, p, bad if k in (0, 3, 12, 13, 14) else 1.0 + 0.01 * (k % 5))
        step = feed(clipper, p, 1000.0)
        assert torch.isfinite(step.threshold) and step.clipped, clipper
        assert torch.linalg.vector_norm(p.grad) < 10.0


# ---------------------------------------------------------------------------------------
# fp16 autocast with a GradScaler on the CPU
# ---------------------------------------------------------------------------------------


def scaler_run(clipper, steps: int = 40, nan_step: int = 30, spike_step: int = 35):
    """A small regression trained under fp16 autocast with GradScaler(init_scale=2**30):
    its first steps overflow; a NaN is injected at ``nan_step``, a 1000x spike at
    ``spike_step``. Returns the model, the per-step records and the skipped steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    records, skipped = [], []
    for k in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.mean((model(x) - y) ** 2)
        scaler.scale(loss).backward()
        if k == nan_step:
            model[0].weight.grad[0, 0] = NAN
        scaler.unscale_(optimizer)
        if k == spike_step:
            for p in model.parameters():
                p.grad.mul_(1000.0)
        before = [p.detach().clone() for p in model.parameters()]
        records.append(clipper(model.parameters()))
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < scale:
            skipped.append(k)
            assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return model, records, skipped


@pytest.mark.parametrize(
    "make",
    [
        lambda: NormClip(1.0),
        lambda: AutoClip(10),
        lambda: ZClip(warmup_steps=10),
        lambda: AGC(0.05),
        lambda: ClipMonitor(AutoClip(10)),
    ],
    ids=["NormClip", "AutoClip", "ZClip", "AGC", "ClipMonitor(AutoClip)"],
)
def test_fp16_autocast_with_a_grad_scaler_survives_overflow_and_nan(make):
    clipper = make()
    model, records, skipped = scaler_run(clipper)
    assert skipped[0] == 0 and 30 in skipped  # overflow at 2**30, and the injected NaN
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = records[-1]
    assert torch.isfinite(last.total_norm)
    if isinstance(clipper, (AutoClip, ZClip, ClipMonitor)):
        assert torch.isfinite(last.threshold)
    assert records[35].clipped  # the spike after the NaN is clipped
    for k in skipped:
        assert not records[k].clipped


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [NoClip, lambda: NormClip(1.0), lambda: ValueClip(0.1), lambda: AutoClip(10), ZClip, AGC],
    ids=["NoClip", "NormClip", "ValueClip", "AutoClip", "ZClip", "AGC"],
)
def test_pure_half_precision_models_get_float32_statistics(make, dtype):
    """Issue 11, item 4: AutoClip failed on a pure fp16/bf16 model (quantile needs float)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).to(dtype)
    clipper = make()
    for _ in range(30):
        model.zero_grad()
        model(torch.randn(8, 16, dtype=dtype)).pow(2).mean().backward()
        grads = [p.grad.float().flatten() for p in model.parameters()]
        step = clipper(model.parameters())
    assert step.total_norm.dtype == step.threshold.dtype == torch.float32
    assert step.clipped.dtype == torch.bool
    expected = torch.linalg.vector_norm(torch.cat(grads))
    torch.testing.assert_close(step.total_norm, expected, rtol=1e-2, atol=0)


def test_fp16_norm_above_the_fp16_range_is_finite_for_the_statistics():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))
    p.grad = torch.full((4,), 60000.0, dtype=torch.float16)  # norm 120000 > 65504
    step = AutoClip(10)(p)
    assert step.total_norm.item() == pytest.approx(120000.0)


def test_zclip_statistics_in_bfloat16_match_float64():
    """Issue 11, item 9: ZClip kept its EMAs in the gradients' dtype (bf16: 4% off)."""
    rng = np.random.default_rng(0)
    values = rng.lognormal(sigma=0.3, size=200)
    half, full = ZClip(warmup_steps=10), ZClip(warmup_steps=10)
    p, q = one_norm_param(torch.bfloat16), one_norm_param(torch.float64)
    for n in values:
        n = float(torch.tensor(n).to(torch.bfloat16))  # the same norm, representable in bf16
        feed(half, p, n)
        feed(full, q, n)
    assert half.mean.dtype == torch.float32
    # the bf16 gradient itself rounds the norm (about 0.4%); the EMA must not add 4%
    assert half.mean.item() == pytest.approx(full.mean.item(), rel=1e-2)
    assert half.var.item() == pytest.approx(full.var.item(), rel=5e-2)


# ---------------------------------------------------------------------------------------
# Inputs: exactly what clip_grad_norm_ takes
# ---------------------------------------------------------------------------------------

ALL_CLIPPERS = [
    NoClip,
    lambda: NormClip(1.0),
    lambda: ValueClip(0.5),
    lambda: AutoClip(10),
    lambda: AGC(0.01),
    lambda: ZClip(warmup_steps=1),
    lambda: ClipMonitor(NormClip(1.0)),
]
ALL_IDS = ["NoClip", "NormClip", "ValueClip", "AutoClip", "AGC", "ZClip", "ClipMonitor"]


@pytest.mark.parametrize("make", ALL_CLIPPERS, ids=ALL_IDS)
def test_a_single_parameter_is_one_parameter_not_its_rows(make):
    """Issue 11, item 3: a lone Parameter was iterated by rows, which have no .grad."""
    p = torch.nn.Parameter(torch.ones(3, 4))
    p.grad = torch.full((3, 4), 2.0)
    step = make()(p)
    assert step.total_norm.item() == pytest.approx(math.sqrt(12 * 4.0))  # not 0


@pytest.mark.parametrize("make", ALL_CLIPPERS, ids=ALL_IDS)
def test_generators_are_consumed_once_and_empty_ones_warn(make):
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    for p in params:
        p.grad = torch.full((2,), 3.0)
    step = make()(p for p in params)
    assert step.total_norm.item() == pytest.approx(math.sqrt(6 * 9.0))
    with pytest.warns(UserWarning, match="empty generator"):
        make()(p for p in [])


@pytest.mark.parametrize("make", ALL_CLIPPERS, ids=ALL_IDS)
@pytest.mark.parametrize("bad", ["abc", 5, [torch.ones(1), "x"]])
def test_bad_parameters_get_clip_grad_norm_s_type_error(make, bad):
    with pytest.raises(TypeError, match="parameters must"):
        make()(bad)


# ---------------------------------------------------------------------------------------
# The clipped flag says what the scaling did
# ---------------------------------------------------------------------------------------


def test_norm_clip_flags_the_eps_shrink_of_a_norm_just_below_the_threshold():
    p = one_norm_param(torch.float64)
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64) * (1.0 - 5e-7)  # in (c - eps, c]
    before = p.grad.clone()
    step = NormClip(1.0)(p)
    assert not torch.equal(p.grad, before)  # clip_grad_norm_'s eps shrank it
    assert step.clipped


def test_autoclip_leaves_a_norm_at_its_threshold_untouched_and_unflagged():
    p = one_norm_param(torch.float64)
    step = feed(AutoClip(10), p, 2.0)  # first step: the threshold is this very norm
    assert step.threshold.item() == 2.0 and not step.clipped
    assert torch.equal(p.grad, torch.tensor([1.2, 1.6], dtype=torch.float64))


# ---------------------------------------------------------------------------------------
# Checkpoint and resume
# ---------------------------------------------------------------------------------------


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


STATEFUL = {
    "AutoClip(window=7)": lambda: AutoClip(30, window=7),
    "AutoClip(window=None)": lambda: AutoClip(30, window=None),
    "ZClip": lambda: ZClip(0.9, 2.0, warmup_steps=6),
    "ClipMonitor(ZClip)": lambda: ClipMonitor(ZClip(0.9, 2.0, warmup_steps=6)),
    "ClipMonitor(AutoClip)": lambda: ClipMonitor(AutoClip(30, window=5), capacity=2),
}


def norm_stream(steps: int = 40) -> list[float]:  # steps >= 32
    rng = np.random.default_rng(1)
    values = rng.lognormal(sigma=0.4, size=steps)
    values[[8, 20, 31]] *= 50.0
    values[[2, 15]] = [NAN, INF]
    return values.tolist()


@pytest.mark.parametrize("stop", [1, 4, 9, 23])  # in warm-up, at its end, ring not full, full
@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_resumed_run_equals_the_uninterrupted_one(name, stop):
    stream = norm_stream()
    whole, p = STATEFUL[name](), one_norm_param()
    expected = []
    for n in stream:
        step = feed(whole, p, n)
        expected.append((step.threshold, step.clipped, p.grad.clone()))

    first, q = STATEFUL[name](), one_norm_param()
    for n in stream[:stop]:
        feed(first, q, n)
    resumed = STATEFUL[name]()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    for n, (threshold, clipped, grad) in zip(stream[stop:], expected[stop:], strict=True):
        step = feed(resumed, q, n)
        assert torch.equal(step.threshold, threshold)
        assert torch.equal(step.clipped, clipped)
        torch.testing.assert_close(q.grad, grad, equal_nan=True, rtol=0, atol=0)
    if isinstance(resumed, ClipMonitor):
        np.testing.assert_array_equal(resumed.history().threshold, whole.history().threshold)


def test_state_dicts_hold_only_tensors_and_plain_numbers():
    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return isinstance(value, (torch.Tensor, int, float)) and not isinstance(value, bool)

    for make in STATEFUL.values():
        clipper, p = make(), one_norm_param()
        for n in norm_stream()[:12]:
            feed(clipper, p, n)
        assert plain(clipper.state_dict())


def test_a_state_from_another_configuration_is_refused():
    clipper = AutoClip(10, window=5)
    feed(clipper, one_norm_param(), 1.0)
    with pytest.raises(ValueError, match="window"):
        AutoClip(10, window=6).load_state_dict(clipper.state_dict())
    with pytest.raises(ValueError, match="warmup_steps"):
        ZClip(warmup_steps=4).load_state_dict(ZClip(warmup_steps=5).state_dict())
    with pytest.raises(ValueError, match="missing"):
        ZClip().load_state_dict({"steps": 0})


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6) | st.just(NAN), min_size=1, max_size=60),
    q=st.floats(0.0, 100.0),
)
def test_nan_percentile_is_numpy_nanpercentile(values, q):
    expected = np.nanpercentile(values, q) if not all(map(math.isnan, values)) else INF
    result = nan_percentile(torch.tensor(values, dtype=torch.float64), q).item()
    assert result == pytest.approx(expected, rel=1e-12, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Long runs: bounded memory
# ---------------------------------------------------------------------------------------


def test_autoclip_window_bounds_memory_and_uses_the_last_norms():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=300)
    clipper, p = AutoClip(20, window=50), one_norm_param()
    for t, n in enumerate(values):
        step = feed(clipper, p, float(n))
        window = values[max(0, t - 49) : t + 1]
        assert step.threshold.item() == pytest.approx(np.percentile(window, 20), rel=1e-12)
    assert clipper._norms.numel() == 50
    np.testing.assert_allclose(clipper.history.numpy(), values[-50:], rtol=1e-15)


def test_monitor_memory_per_step_is_a_few_bytes():
    """Issue 11, item 5: three 0-d tensors per step were about 2.2 KB of host memory."""
    monitor = ClipMonitor(NormClip(1.0))
    p = one_norm_param(torch.float32)
    for k in range(5000):
        p.grad = torch.tensor([0.1 * (k % 30), 0.0])
        monitor(p)
    allocated = sum(b.numel() * b.element_size() for b in (
        monitor._norm, monitor._threshold, monitor._clipped))  # fmt: skip
    assert len(monitor) == 5000 and allocated <= 2 * 9 * 5000
    history = monitor.history()
    # a norm of exactly 1.0 is shrunk by clip_grad_norm_'s eps, so it counts as clipped
    clipped = [0.1 * (k % 30) > 1.0 - 1e-6 for k in range(5000)]
    assert history.clip_rate == pytest.approx(np.mean(clipped))


def test_warnings_are_not_raised_by_normal_steps():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make in ALL_CLIPPERS:
            feed(make(), one_norm_param(), 1.0)


# ---------------------------------------------------------------------------------------
# Devices: every ClipStep on the gradients' device, in every phase
# ---------------------------------------------------------------------------------------

DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [*ALL_CLIPPERS, lambda: ClipMonitor(ZClip(warmup_steps=2))],
                         ids=[*ALL_IDS, "ClipMonitor(ZClip)"])  # fmt: skip
def test_every_step_stays_on_the_gradients_device(make, device):
    """Issue 11, item 9: ZClip returned CPU tensors during warm-up and device ones after,
    so ClipMonitor(ZClip()) on a GPU failed in torch.stack."""
    clipper = make()
    p = torch.nn.Parameter(torch.ones(3, 2, device=device))
    for _ in range(4):  # warm-up and after
        p.grad = torch.ones(3, 2, device=device)
        step = clipper([p])
        for value in (step.total_norm, step.threshold, step.clipped):
            assert value.device.type == device
    if isinstance(clipper, ClipMonitor):
        assert all(b.device.type == device for b in clipper.buffers()) and len(clipper) == 4


@pytest.mark.parametrize("make", [*ALL_CLIPPERS, lambda: ClipMonitor(AutoClip(10, window=4))],
                         ids=[*ALL_IDS, "ClipMonitor(AutoClip)"])  # fmt: skip
def test_no_host_sync_in_any_phase(make):
    """The non-finite policy is torch.where and masks: no step copies a value to Python."""
    from clipping_lib.lab.syncs import CountHostSyncs

    clipper, p = make(), one_norm_param(torch.float32)
    with CountHostSyncs() as counter:
        for n in [NAN, 1.0, 2.0, INF, 1.5, NAN, 1.2, 1.1, 1000.0, 0.9]:  # warm-up, ring wraps
            feed(clipper, p, n)
    assert counter.count == 0
