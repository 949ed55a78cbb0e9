"""Notebook 01's pure functions and slider panels: clipping geometry and the steep wall."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clipping_lib.lab.panels import geometry
from clipping_lib.lab.plots import figure_to_png, freeze_static_artists, new_figure


@settings(max_examples=60, deadline=None)
@given(
    angle=st.floats(0.0, 360.0),
    length=st.floats(0.01, 5.0),
    threshold=st.floats(0.05, 3.5),
)
def test_norm_clipping_keeps_direction_value_clipping_stays_in_the_box(angle, length, threshold):
    geo = geometry.clip_geometry(angle, length, threshold)
    assert geo.norm_angle < 1e-5
    assert abs(geo.norm_clipped.norm().item() - min(length, threshold)) < 1e-12
    assert geo.value_clipped.abs().max().item() <= threshold
    assert geo.value_clipped.norm().item() <= threshold * math.sqrt(2) + 1e-12
    if length <= threshold:  # inside the ball is inside the box: nothing changes
        assert torch.equal(geo.value_clipped, geo.gradient)


def test_value_clipping_turns_except_on_axes_and_diagonals():
    for angle in (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0):
        assert geometry.clip_geometry(angle, 3.0, 1.0).value_angle < 1e-5
    turned = geometry.clip_geometry(math.degrees(math.atan2(1, 3)), math.sqrt(10), 1.5)
    assert abs(turned.value_angle - 15.255) < 1e-3  # g = (3, 1) -> (1.5, 1), notebook 01
    assert math.isnan(geometry.clip_geometry(30.0, 0.0, 1.0).value_angle)


def test_clip_geometry_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        geometry.clip_geometry(0.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="length"):
        geometry.clip_geometry(0.0, math.nan, 1.0)


def test_value_clip_cosines_against_a_direct_computation():
    cosines = geometry.value_clip_cosines(50, [0.5, 100.0], draws=4, seed=3)
    assert cosines.shape == (2, 4)
    g = torch.randn(4, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    clipped = g.clamp(-0.5, 0.5)
    expected = torch.nn.functional.cosine_similarity(clipped, g, dim=1)
    torch.testing.assert_close(cosines[0], expected)
    torch.testing.assert_close(cosines[1], torch.ones(4, dtype=torch.float64))  # nothing cut


@pytest.mark.parametrize("threshold", [0.25, 0.5, 1.0, 2.0])
def test_cosine_converges_to_the_gaussian_limit_and_heavy_tails_turn_further(threshold):
    cosines = geometry.value_clip_cosines(20000, [threshold], draws=8)
    limit = geometry.gaussian_value_clip_cosine(threshold)
    assert abs(cosines.median().item() - limit) < 3e-3
    heavy = geometry.value_clip_cosines(20000, [threshold], draws=8, distribution="student_t3")
    assert heavy.median() < cosines.median()


def test_gaussian_limit_formula():
    sample = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for c in (0.3, 1.0, 1.7):
        clipped = sample.clamp(-c, c)
        second_moments = clipped.square().mean() * sample.square().mean()
        monte_carlo = (clipped * sample).mean() / second_moments.sqrt()
        assert abs(geometry.gaussian_value_clip_cosine(c) - monte_carlo.item()) < 2e-3
    assert geometry.gaussian_value_clip_cosine(0.0) == math.sqrt(2 / math.pi)
    assert abs(geometry.gaussian_value_clip_cosine(1e-6) - math.sqrt(2 / math.pi)) < 1e-6
    assert geometry.gaussian_value_clip_cosine(10.0) > 1 - 1e-12
    with pytest.raises(ValueError, match="distribution"):
        geometry.value_clip_cosines(4, [1.0], distribution="cauchy")
    with pytest.raises(ValueError, match="dimension"):
        geometry.value_clip_cosines(0, [1.0])


def test_steep_wall_gradient_is_the_derivative_of_the_loss():
    theta = np.linspace(-1, 12, 301)
    h = 1e-6
    numeric = (geometry.steep_wall_loss(theta + h) - geometry.steep_wall_loss(theta - h)) / (2 * h)
    np.testing.assert_allclose(geometry.steep_wall_gradient(theta), numeric, rtol=1e-5, atol=1e-5)
    assert abs(geometry.steep_wall_gradient(0.5) + 100.5) < 1e-9  # Hs/4 = 100 on the wall
    assert np.isfinite(geometry.steep_wall_loss(np.array([-1e4, 1e4]))).all()


def test_steep_wall_paths():
    plain, clipped = geometry.steep_wall_paths(0.1, 1.0, steps=25)
    assert plain[0] == clipped[0] == 0.5
    assert abs(plain[1] - 10.55) < 1e-9  # 0.5 + 0.1 * 100.5: far past the minimum
    assert np.all(np.abs(np.diff(clipped)) <= 0.1 + 1e-12)
    assert geometry.steep_wall_loss(clipped[-1]) < 1e-2 < geometry.steep_wall_loss(plain[-1])
    same, _ = geometry.steep_wall_paths(0.1, 1e9, steps=25)  # a huge c clips nothing
    np.testing.assert_array_equal(same, plain)
    with pytest.raises(ValueError, match="learning_rate"):
        geometry.steep_wall_paths(-0.1, 1.0)


def test_freeze_static_artists_draws_the_same_pixels():
    figure = new_figure(3, 2)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], label="static")
    ax.set_title("frozen")
    ax.legend()
    (dynamic,) = ax.plot([0, 1], [1, 0], color="red")
    figure.tight_layout()
    before = np.asarray(Image.open(io.BytesIO(figure_to_png(figure))))
    freeze_static_artists(figure, [dynamic])
    after = np.asarray(Image.open(io.BytesIO(figure_to_png(figure))))
    np.testing.assert_array_equal(before, after)
    dynamic.set_data([0, 1], [0.5, 0.5])
    assert not np.array_equal(after, np.asarray(Image.open(io.BytesIO(figure_to_png(figure)))))
    with pytest.raises(RuntimeError, match="frozen"):
        figure.savefig(io.BytesIO(), format="png", dpi=200)


def test_geometry_panel_moves_the_arrows():
    panel = geometry.PANELS["clip_geometry"]()
    before = panel.image.value
    panel.controls["angle"].value = math.degrees(math.atan2(1, 3))
    panel.controls["length"].value = math.sqrt(10)
    panel.controls["threshold"].value = 1.5
    assert panel.image.value != before
    ax = panel.figure.axes[0]
    box = next(p for p in ax.patches if type(p).__name__ == "Rectangle" and p.get_width() > 0)
    assert box.get_width() == pytest.approx(3.0)
    assert "15.3°" in panel.readout.value and "0.0°" in panel.readout.value
    assert "‖·‖ = 1.500" in panel.readout.value  # the norm-clipped vector has norm c
    panel.controls["length"].value = 0.0  # the widget's minimum: no direction at all
    assert "undefined" in panel.readout.value


def test_steep_wall_panel_follows_its_sliders():
    panel = geometry.PANELS["steep_wall"]()
    assert "0.50 → 10.55" in panel.readout.value
    before = panel.image.value
    panel.controls["learning_rate"].value = 0.5
    assert panel.image.value != before
    assert "off the plot" in panel.readout.value
    plain_line = panel.figure.axes[0].lines[1]
    expected, _ = geometry.steep_wall_paths(0.5, 1.0, steps=25)
    np.testing.assert_allclose(plain_line.get_xdata(), expected)
    panel.controls["threshold"].value = 5.0
    assert "clipped θ → 3.000" in panel.readout.value  # 0.5 + 0.5 * 5


def test_plot_value_clip_cosines_draws_one_panel_per_distribution(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    dims, thresholds = [2, 8], [0.5, 1.0]
    cosines = {
        dist: torch.stack(
            [geometry.value_clip_cosines(d, thresholds, distribution=dist) for d in dims]
        )
        for dist in geometry.DISTRIBUTIONS
    }
    geometry.plot_value_clip_cosines(cosines, dims, thresholds)
    (figure,) = shown
    assert len(figure.axes) == len(geometry.DISTRIBUTIONS)
    assert all(len(ax.lines) >= len(thresholds) + 1 for ax in figure.axes)
    plt.close(figure)


def test_least_squares_tasks_gradient_is_the_derivative_of_the_loss():
    tasks = geometry.two_least_squares_tasks(samples=30, features=4, seed=2)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for task in ("A", "B"):
        loss = 0.5 * ((tasks.inputs @ w - tasks.targets[task]) ** 2).mean()
        (expected,) = torch.autograd.grad(loss, w)
        assert torch.allclose(tasks.gradient(w.detach(), task), expected)
        assert tasks.loss(w.detach(), task) == pytest.approx(loss.item())
    assert not torch.equal(tasks.targets["A"], tasks.targets["B"])
