"""Panels of notebooks 03 and 04: their pure functions and their controls."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.lab.panels import api


def test_clip_report_matches_torch_and_shows_the_eps_shortfall():
    grads = api.example_gradients()
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0)
    report = api.clip_report(grads, 1.0, 2.0, eps=1e-6)
    assert report["returned"] == expected
    torch.testing.assert_close(
        report["after"], torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
    )
    norm = report["returned"].item()
    assert 1.0 - report["left"].item() == pytest.approx(1e-6 / (norm + 1e-6), rel=1e-6)
    exact = api.clip_report(grads, 1.0, 2.0, eps=0.0)
    assert exact["left"].item() == pytest.approx(1.0, abs=1e-15)


@settings(max_examples=30, deadline=None)
@given(
    max_norm=st.floats(0.1, 10.0),
    norm_type=st.sampled_from([1.0, 2.0, math.inf, "inf"]),
)
def test_clip_report_leaves_at_most_max_norm_and_scales_every_tensor_alike(max_norm, norm_type):
    report = api.clip_report(api.example_gradients(), max_norm, norm_type)
    assert report["left"] <= max_norm or report["returned"] <= max_norm
    ratios = report["after"] / report["before"]
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))


def test_fp16_norms_break_where_float16_breaks():
    magnitudes = torch.tensor([1e-5, 1.0, 300.0, 3e4])
    rows = api.fp16_norms(magnitudes, 100)
    true = rows["true"]
    torch.testing.assert_close(true, magnitudes.double().half().double() * 10, rtol=1e-12, atol=0)
    squares = rows["float16 squares"]
    assert squares[0] == 0  # (1e-5)^2 = 1e-10 underflows in float16
    assert math.isinf(squares[2]) and math.isinf(squares[3])  # 300^2 = 90000 > 65504
    assert math.isinf(rows["float16 vector_norm"][3])  # the norm 3e5 itself does not fit
    assert rows["float16 vector_norm"][2] == pytest.approx(3000, rel=1e-3)
    for name in ("pre-scaled", "float32 accumulation"):
        torch.testing.assert_close(rows[name], true, rtol=1e-3, atol=0)
    # n = 1000: the float16 *sum* of squares overflows once 1000 m^2 > 65504, near m = 8.1;
    # at m = 5e-4 the squares are subnormal and the norm is off by more than 1%.
    rows = api.fp16_norms(torch.tensor([5e-4, 8.0, 9.0]), 1000)
    assert abs(rows["float16 squares"][0] / rows["true"][0] - 1) > 0.01
    assert math.isfinite(rows["float16 squares"][1]) and math.isinf(rows["float16 squares"][2])
    with pytest.raises(ValueError, match="n must be >= 1"):
        api.fp16_norms(magnitudes, 0)


def test_norm_status_codes():
    true = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    computed = torch.tensor([1.001, math.inf, 0.0, 0.5], dtype=torch.float64)
    assert api.norm_status(computed, true).tolist() == [0, 1, 2, 3]


def test_norm_clipping_panel_redraws_and_reports():
    panel = api.PANELS["norm_clipping"]()
    assert "clipped" in panel.readout.value
    before = panel.image.value
    panel.controls["max_norm"].value = 10.0  # above the L2 total of about 5.16: no clipping
    assert panel.image.value != before
    assert "not clipped" in panel.readout.value
    panel.controls["norm_type"].value = "1"  # the L1 total is about 82: clipped again
    assert "<b>clipped</b>" in panel.readout.value
    panel.controls["eps"].value = "exact (0)"
    shortfall = float(panel.readout.value.rsplit("max_norm − left = ", 1)[1])
    assert abs(shortfall) < 1e-12  # exact up to float64 rounding, not ~1e-6 * 10 / 82


def test_fp16_panel_moves_with_both_controls():
    panel = api.PANELS["fp16_norm"]()
    panel.controls["log10_magnitude"].value = 3.0  # |g| = 1000: squares overflow
    assert "float16 squares: <b>inf (overflow)</b>" in panel.readout.value
    before = panel.image.value
    panel.controls["log10_magnitude"].value = 0.0
    assert panel.image.value != before
    assert "inf" not in panel.readout.value
    panel.controls["log10_n"].value = 4
    assert "n = 10,000 elements" in panel.readout.value
    panel.controls["log10_magnitude"].value = -5.0  # squares of 1e-5 underflow to 0
    assert "float16 squares: <b>0 (underflow)</b>" in panel.readout.value
