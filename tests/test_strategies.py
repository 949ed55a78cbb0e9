"""The Clipper objects clip like the functions they wrap and report what they did."""

from __future__ import annotations

import pytest
import torch
from conftest import clone_params, make_params

import clipping_lib as cl
from clipping_lib.strategies import ClipStep, NoClip, NormClip, ValueClip

SHAPES = [(3, 4), (5,)]


@pytest.mark.parametrize(("scale", "expect_clip"), [(10.0, True), (0.01, False)])
def test_norm_clip_matches_clip_grad_norm_and_reports(scale, expect_clip):
    params = make_params(SHAPES, scale=scale)
    ref = clone_params(params)
    step = NormClip(1.0)(params)
    ref_norm = cl.clip_grad_norm_(ref, 1.0)
    assert isinstance(step, ClipStep)
    assert torch.equal(step.total_norm, ref_norm)
    assert step.threshold.item() == 1.0
    assert step.clipped.item() is expect_clip
    for p, q in zip(params, ref, strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize(("scale", "expect_clip"), [(10.0, True), (0.01, False)])
def test_value_clip_matches_clip_grad_value_and_reports(scale, expect_clip):
    params = make_params(SHAPES, scale=scale)
    ref = clone_params(params)
    norm_before = cl.get_total_norm([p.grad for p in params])
    step = ValueClip(0.5)(params)
    cl.clip_grad_value_(ref, 0.5)
    assert torch.equal(step.total_norm, norm_before)
    assert step.clipped.item() is expect_clip
    for p, q in zip(params, ref, strict=True):
        assert torch.equal(p.grad, q.grad)


def test_no_clip_measures_and_changes_nothing():
    params = make_params(SHAPES, scale=100.0)
    before = [p.grad.clone() for p in params]
    step = NoClip()(params)
    assert torch.isinf(step.threshold) and not step.clipped
    torch.testing.assert_close(step.total_norm, cl.get_total_norm(before))
    for p, g in zip(params, before, strict=True):
        assert torch.equal(p.grad, g)


def test_generators_are_accepted():
    params = make_params(SHAPES, scale=10.0)
    step = NormClip(1.0)(p for p in params)
    assert step.clipped
    assert cl.get_total_norm([p.grad for p in params]) <= 1.0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: NormClip(-1.0), "max_norm"),
        (lambda: ValueClip(float("nan")), "clip_value"),
        (lambda: NormClip(1.0, eps=-1.0), "eps"),
    ],
)
def test_bad_thresholds_are_refused_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_reprs_name_the_threshold():
    assert repr(NormClip(2.5)) == "NormClip(max_norm=2.5)"
    assert repr(ValueClip(0.1)) == "ValueClip(clip_value=0.1)"
