"""The hand-written clipping of clipping_lib.lab.manual against torch.nn.utils."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_params
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.clip import get_total_norm
from clipping_lib.lab.manual import (
    naive_clip_grad_norm_,
    naive_clip_grad_value_,
    vectorized_clip_grad_norm_,
)
from clipping_lib.lab.syncs import CountHostSyncs

SHAPES = [(8, 4), (4,), (16, 8), (8,), (1, 8), (1,)]


def _twins(**kwargs):
    params = make_params(SHAPES, **kwargs)
    reference = make_params(SHAPES, **kwargs)
    return params, reference


@settings(max_examples=40, deadline=None)
@given(
    clip_value=st.floats(0.0, 3.0),
    scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 10_000),
)
def test_naive_value_clip_equals_torch(clip_value, scale, seed):
    ours, reference = _twins(scale=scale, seed=seed, grad_none=(1,))
    naive_clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(reference, clip_value)
    for p, q in zip(ours, reference, strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


@settings(max_examples=40, deadline=None)
@given(
    max_norm=st.floats(0.01, 20.0),
    scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 10_000),
)
def test_naive_and_vectorised_norm_clip_match_torch(max_norm, scale, seed):
    naive, vectorised, reference = (make_params(SHAPES, scale=scale, seed=seed) for _ in range(3))
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm)
    naive_norm = naive_clip_grad_norm_(naive, max_norm)
    vectorised_norm = vectorized_clip_grad_norm_(vectorised, max_norm)
    assert isinstance(naive_norm, float) and isinstance(vectorised_norm, torch.Tensor)
    # The naive loop adds the squares in Python float64: equal to float32 rounding.
    assert naive_norm == pytest.approx(expected.item(), rel=1e-6)
    # The vectorised version runs the same kernels as PyTorch: bit for bit.
    assert torch.equal(vectorised_norm, expected)
    for p, v, q in zip(naive, vectorised, reference, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=1e-9)
        assert torch.equal(v.grad, q.grad)


def test_on_a_real_model_after_backward():
    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        for _ in range(3)
    ]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    x, y = torch.randn(64, 8) * 5, torch.randn(64, 2)
    for m in models:
        torch.nn.functional.mse_loss(m(x), y).backward()
    naive, vectorised, reference = models
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert expected > 0.5
    assert naive_clip_grad_norm_(naive.parameters(), 0.5) == pytest.approx(expected.item(), 1e-6)
    assert torch.equal(vectorized_clip_grad_norm_(vectorised.parameters(), 0.5), expected)
    for m in (naive, vectorised):
        difference = max(
            (p.grad - q.grad).abs().max().item()
            for p, q in zip(m.parameters(), reference.parameters(), strict=True)
        )
        assert difference < 1e-7


def test_small_gradients_are_left_alone():
    for clip in (naive_clip_grad_norm_, vectorized_clip_grad_norm_):
        params = make_params(SHAPES, scale=1e-3)
        before = [p.grad.clone() for p in params]
        norm = clip(params, 10.0)
        assert float(norm) < 10.0
        assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))


def test_empty_and_gradless_inputs():
    assert naive_clip_grad_norm_([], 1.0) == 0.0
    assert torch.equal(vectorized_clip_grad_norm_([], 1.0), torch.tensor(0.0))
    gradless = make_params([(3,), (2,)], grad_none=(0, 1))
    assert naive_clip_grad_norm_(gradless, 1.0) == 0.0
    assert vectorized_clip_grad_norm_(gradless, 1.0) == 0.0
    naive_clip_grad_value_(gradless, 1.0)
    assert all(p.grad is None for p in gradless)


def test_infinite_gradient_behaves_like_torch():
    for clip in (naive_clip_grad_norm_, vectorized_clip_grad_norm_, torch.nn.utils.clip_grad_norm_):
        params = make_params([(3,), (2,)])
        params[0].grad[1] = math.inf
        norm = clip(params, 1.0)
        assert math.isinf(float(norm))
        # coefficient 1/inf = 0: finite entries become 0, the inf becomes inf * 0 = NaN
        assert torch.isnan(params[0].grad[1]) and torch.count_nonzero(params[1].grad) == 0


def test_float16_total_norm_overflows_in_float16_but_not_in_python_floats():
    def params16():
        params = [torch.nn.Parameter(torch.zeros(1000, dtype=torch.float16)) for _ in range(2)]
        for p in params:
            p.grad = torch.full((1000,), 1500.0, dtype=torch.float16)  # each norm ~ 47434
        return params

    vectorised, reference, naive = params16(), params16(), params16()
    assert math.isinf(vectorized_clip_grad_norm_(vectorised, 1.0))
    assert math.isinf(torch.nn.utils.clip_grad_norm_(reference, 1.0))
    assert all(torch.count_nonzero(p.grad) == 0 for p in vectorised + reference)  # wiped out
    assert naive_clip_grad_norm_(naive, 1.0) == pytest.approx(1500 * math.sqrt(2000), rel=1e-3)
    assert get_total_norm([p.grad.float() for p in naive]) == pytest.approx(1.0, rel=1e-3)


def test_a_parameter_listed_twice_is_counted_and_scaled_twice():
    for clip in (naive_clip_grad_norm_, vectorized_clip_grad_norm_, torch.nn.utils.clip_grad_norm_):
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.tensor([3.0, 4.0])
        norm = clip([p, p], 1.0)
        assert float(norm) == pytest.approx(5.0 * math.sqrt(2))
        coefficient = 1.0 / math.sqrt(50)  # applied once per listing: twice
        assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(5 * coefficient**2, 1e-5)


def test_host_sync_counter_sees_one_sync_per_tensor_in_the_naive_loop_and_none_vectorised():
    params = make_params(SHAPES)
    for clip, expected in ((naive_clip_grad_norm_, len(SHAPES)), (vectorized_clip_grad_norm_, 0)):
        with CountHostSyncs() as counter:
            clip(params, 0.1)
        assert counter.count == expected, clip.__name__


def test_host_sync_counter_sees_python_conversions_only():
    # What notebook 04 says: .item(), float(), bool() are counted; syncs inside
    # data-dependent operations (nonzero, boolean masks, unique) and .cpu() are not.
    g = torch.tensor([1.0, -2.0, 3.0])
    with CountHostSyncs() as conversions:
        g.sum().item()
        float(g.max())
        bool(g.min() < 0)
        g.tolist()
    assert conversions.count == 4
    with CountHostSyncs() as inside_ops:
        g[g > 0]
        torch.nonzero(g)
        torch.unique(g)
        g.cpu()
    assert inside_ops.count == 0


# --- The bench notebook 04 runs on (clipping_lib.lab.manual) -----------------------------


def test_gradient_set_is_seeded_and_names_bad_arguments():
    from clipping_lib.lab.manual import gradient_set

    a, b = gradient_set(5, 8), gradient_set(5, 8)
    assert len(a) == 5 and all(p.grad.shape == (8, 8) for p in a)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b, strict=True))
    assert not torch.equal(gradient_set(5, 8, seed=1)[0].grad, a[0].grad)
    with pytest.raises(ValueError, match="count"):
        gradient_set(-1)
    with pytest.raises(ValueError, match="size"):
        gradient_set(3, 0)


def test_host_syncs_counts_one_per_tensor_for_the_loop():
    from clipping_lib.lab.manual import gradient_set, host_syncs

    assert host_syncs(naive_clip_grad_norm_, gradient_set(7)) == 7
    assert host_syncs(vectorized_clip_grad_norm_, gradient_set(7)) == 0


def test_time_clippers_restores_the_gradients_and_reports_every_candidate():
    from clipping_lib.lab.manual import CLIPPERS, gradient_set, time_clippers

    params = gradient_set(4, 4)
    before = [p.grad.clone() for p in params]
    medians = time_clippers(params, rounds=2, warmup=0)
    assert set(medians) == set(CLIPPERS) and all(t >= 0 for t in medians.values())
    # each call clipped freshly restored gradients, so they end clipped once, not many times
    assert get_total_norm(before).item() > 10
    assert get_total_norm([p.grad for p in params]).item() == pytest.approx(1.0, rel=1e-5)


def test_classifier_bench_is_deterministic():
    from clipping_lib.lab.manual import classifier_with_grads, max_grad_difference

    a, b = classifier_with_grads(), classifier_with_grads()
    assert len(list(a.parameters())) == 6
    assert max_grad_difference(a, b) == 0.0
    assert max_grad_difference(a, classifier_with_grads(seed=1)) > 0
