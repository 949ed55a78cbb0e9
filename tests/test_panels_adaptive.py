"""Notebook 07's panel: the NumPy replays equal the library clippers; the controls redraw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.adaptive import AutoClip, ZClip
from clipping_lib.lab.panels.adaptive import (
    METHODS,
    PANELS,
    autoclip_thresholds,
    replay,
    zclip_thresholds,
)


def clipper_replay(clipper, norms):
    """Feed each norm to a real clipper as the gradient of a one-element parameter."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    steps = []
    for n in norms:
        p.grad = torch.tensor([n], dtype=torch.float64)
        steps.append(clipper([p]))
    return (
        np.array([s.threshold.item() for s in steps]),
        np.array([bool(s.clipped) for s in steps]),
    )


def spiky_norms(seed, size=80):
    rng = np.random.default_rng(seed)
    norms = rng.lognormal(sigma=0.5, size=size)
    norms[rng.choice(size, 5, replace=False)] *= 30
    return norms


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), percentile=st.floats(1.0, 100.0))
def test_autoclip_replay_equals_the_clipper(seed, percentile):
    norms = spiky_norms(seed)
    thresholds, clipped = clipper_replay(AutoClip(percentile), norms)
    np.testing.assert_allclose(autoclip_thresholds(norms, percentile), thresholds, rtol=1e-9)
    np.testing.assert_array_equal(replay(norms, "AutoClip", percentile=percentile).clipped, clipped)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), z=st.floats(0.5, 5.0), alpha=st.floats(0.5, 0.99))
def test_zclip_replay_equals_the_clipper(seed, z, alpha):
    norms = spiky_norms(seed)
    thresholds, clipped = clipper_replay(ZClip(alpha, z), norms)
    np.testing.assert_allclose(zclip_thresholds(norms, alpha, z), thresholds, rtol=1e-9)
    np.testing.assert_array_equal(replay(norms, "ZClip", z_thresh=z, alpha=alpha).clipped, clipped)


def test_fixed_replay_and_bad_input():
    norms = np.array([0.5, 2.0, 1.0])
    np.testing.assert_array_equal(replay(norms, "fixed", max_norm=1.0).clipped, [0, 1, 0])
    with pytest.raises(ValueError, match="method"):
        replay(norms, "AGC")
    with pytest.raises(ValueError, match="percentile"):
        autoclip_thresholds(norms, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        zclip_thresholds(norms, alpha=1.0)


def test_panel_switches_methods_and_parameters():
    panel = PANELS["adaptive"]()
    images, readouts = {panel.image.value}, set()
    for method in METHODS:
        panel.controls["method"].value = method
        images.add(panel.image.value)
        readouts.add(panel.readout.value)
    assert len(images) == len(METHODS) and len(readouts) == len(METHODS)
    assert "ZClip" in panel.readout.value and "spikes clipped: 4 of 4" in panel.readout.value
    panel.controls["method"].value = "fixed"
    panel.controls["max_norm"].value = 1e4  # above every norm: nothing clipped
    assert "clip rate 0.0%" in panel.readout.value
    panel.controls["method"].value = "AutoClip"
    panel.controls["percentile"].value = 100.0  # the running maximum never clips
    assert "clip rate 0.0%" in panel.readout.value
    for name in ("z_thresh", "alpha"):  # every value in range is accepted
        widget = panel.controls[name]
        widget.value, widget.value = widget.min, widget.max


def test_plot_comparison_draws_survivors_as_curves_and_divergences_as_crosses():
    from clipping_lib.lab.compare import compare_methods
    from clipping_lib.lab.panels.adaptive import plot_comparison, plot_norm_distribution
    from clipping_lib.lab.plots import new_figure
    from clipping_lib.lab.tasks import adding_problem
    from clipping_lib.strategies import NoClip, NormClip

    comparison = compare_methods(
        lambda seed: adding_problem(20 * 8, 5, seed=seed),
        {"blows up": NoClip, "clipped": lambda: NormClip(0.01)},
        [0, 1],
        test=adding_problem(16, 5), baseline=1 / 6, steps=20, eval_every=5, lr=100.0,
        hidden_size=4, batch_size=8,
    )  # fmt: skip
    assert comparison.diverged[0].all() and not comparison.diverged[1].any()
    figure = new_figure()
    curves, finals = figure.subplots(1, 2)
    plot_comparison((curves, finals), comparison, {"blows up": "diverged", "clipped": "norm"})
    lines = {line.get_label(): line for line in curves.get_lines()}
    assert set(lines) == {"blows up", "clipped", "trivial baseline"}
    assert lines["blows up"].get_xdata().max() < 20 == lines["clipped"].get_xdata().max()
    crosses = [line for line in finals.get_lines() if line.get_marker() == "x"]
    crosses = [line for line in crosses if len(line.get_ydata())]
    top = 3 * max(1 / 6, np.nanmax(comparison.final_loss))  # above every point drawn
    assert len(crosses) == 1 and np.allclose(crosses[0].get_ydata(), top)
    ax = figure.add_subplot()
    plot_norm_distribution(ax, np.array([1.0, 2.0, 50.0]), {50: 2.0, 99: 49.0})
    assert [line.get_label() for line in ax.get_lines()] == ["p50", "p99"]
