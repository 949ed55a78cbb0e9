"""Properties of clipping that hold for any shapes, dtypes, norm types and thresholds."""

from __future__ import annotations

import math

import torch
from conftest import clone_params
from hypothesis import given, settings
from hypothesis import strategies as st

import clipping_lib as cl

shapes = st.lists(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=5
)
norm_types = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.5, math.inf])
thresholds = st.floats(0.01, 100.0)
scales = st.floats(1e-3, 1e3)
seeds = st.integers(0, 2**16)


def params_for(shape_list, scale, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shape_list:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def flat(params):
    return torch.cat([p.grad.flatten() for p in params])


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, norm_types, thresholds)
def test_matches_torch_for_any_input(shape_list, scale, seed, norm_type, max_norm):
    ours = params_for(shape_list, scale, seed, torch.float32)
    ref = clone_params(ours)
    norm = cl.clip_grad_norm_(ours, max_norm, norm_type)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type))
    assert torch.equal(flat(ours), flat(ref))


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, norm_types, thresholds)
def test_clipped_norm_never_exceeds_max_norm(shape_list, scale, seed, norm_type, max_norm):
    params = params_for(shape_list, scale, seed)
    cl.clip_grad_norm_(params, max_norm, norm_type)
    assert torch.linalg.vector_norm(flat(params), norm_type) <= max_norm * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, thresholds)
def test_norm_clipping_preserves_direction(shape_list, scale, seed, max_norm):
    params = params_for(shape_list, scale, seed)
    before = flat(params).clone()
    cl.clip_grad_norm_(params, max_norm)
    cosine = torch.nn.functional.cosine_similarity(before, flat(params), dim=0)
    assert abs(cosine.item() - 1.0) < 1e-12


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, norm_types, thresholds)
def test_exact_clipping_is_idempotent(shape_list, scale, seed, norm_type, max_norm):
    params = params_for(shape_list, scale, seed)
    cl.clip_grad_norm_(params, max_norm, norm_type, eps=0.0)
    once = flat(params).clone()
    cl.clip_grad_norm_(params, max_norm, norm_type, eps=0.0)
    torch.testing.assert_close(flat(params), once, rtol=1e-12, atol=0)


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, norm_types)
def test_exact_clipping_is_a_no_op_below_the_threshold(shape_list, scale, seed, norm_type):
    params = params_for(shape_list, scale, seed)
    before = flat(params).clone()
    norm = torch.linalg.vector_norm(before, norm_type)
    cl.clip_grad_norm_(params, norm.item() * 1.01, norm_type, eps=0.0)
    assert torch.equal(flat(params), before)


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, thresholds)
def test_value_clipping_bounds_every_element_and_is_idempotent(shape_list, scale, seed, c):
    params = params_for(shape_list, scale, seed)
    before = flat(params).clone()
    cl.clip_grad_value_(params, c)
    after = flat(params).clone()
    assert after.abs().max() <= c
    assert torch.equal(after[before.abs() <= c], before[before.abs() <= c])
    cl.clip_grad_value_(params, c)
    assert torch.equal(flat(params), after)


@settings(max_examples=60, deadline=None)
@given(shapes, scales, seeds, norm_types)
def test_total_norm_equals_norm_of_the_concatenation(shape_list, scale, seed, norm_type):
    grads = [p.grad for p in params_for(shape_list, scale, seed)]
    torch.testing.assert_close(
        cl.get_total_norm(grads, norm_type),
        torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]), norm_type),
        rtol=1e-12,
        atol=0,
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20), thresholds, norm_types)
def test_pure_forms_agree_with_the_in_place_ones(values, c, norm_type):
    g = torch.tensor(values, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros_like(g))
    p.grad = g.clone()
    cl.clip_grad_norm_([p], c, norm_type, eps=0.0)
    torch.testing.assert_close(cl.clip_by_norm(g, c, norm_type), p.grad, rtol=1e-12, atol=0)
    p.grad = g.clone()
    cl.clip_grad_value_([p], c)
    assert torch.equal(cl.clip_by_value(g, c), p.grad)
