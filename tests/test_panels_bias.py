"""Notebook 06's clipping-bias panel and the pure function behind it."""

from __future__ import annotations

import numpy as np
import pytest

from clipping_lib.lab.noise import clipping_fixed_point, expected_clipped_gradient
from clipping_lib.lab.panels.bias import PANELS, X_RANGE, bias_panel, bias_profile


@pytest.mark.parametrize("noise", ["gaussian", "pareto"])
def test_symmetric_noise_profile_is_odd_and_unbiased(noise):
    profile = bias_profile(0.5, noise)
    assert profile.x[0] == X_RANGE[0] and profile.x[-1] == X_RANGE[1]
    np.testing.assert_allclose(profile.expected, -profile.expected[::-1], atol=1e-9)
    assert abs(profile.fixed_point) < 1e-9


def test_skewed_profile_is_the_library_computation_and_biased():
    profile = bias_profile(0.5, "exponential")
    np.testing.assert_array_equal(
        profile.expected, expected_clipped_gradient(profile.x, 0.5, "exponential").numpy()
    )
    assert profile.fixed_point == float(clipping_fixed_point(0.5, "exponential")) > 0.2
    assert np.all(np.diff(profile.expected) >= 0) and np.all(np.abs(profile.expected) <= 0.5)


def test_every_control_redraws_and_the_readout_follows():
    panel = bias_panel()
    assert "exponential" in panel.readout.value
    for name, value, expected in [("threshold", 2.0, "c = 2"), ("noise", "gaussian", "+0.0000")]:
        before = panel.image.value
        panel.controls[name].value = value
        assert panel.image.value != before, name
        assert expected in panel.readout.value, (name, panel.readout.value)
    root = panel.figure.axes[0].get_lines()[-1]
    assert root.get_xdata()[0] == pytest.approx(0.0, abs=1e-9)


def test_controls_accept_their_extremes():
    panel = bias_panel()
    for noise in ("gaussian", "exponential", "pareto"):
        panel.controls["noise"].value = noise
        for value in (10**-1.3, 10.0):
            panel.controls["threshold"].value = value
            assert "settles at" in panel.readout.value


def test_registered_factory_builds():
    assert set(PANELS) == {"bias"}


def test_lowering_the_threshold_moves_the_settling_point_only_for_skewed_noise():
    """What the lesson's panel shows (moved here from notebook 06: it drives the widget)."""
    panel = bias_panel(threshold=0.5, noise="exponential")
    settle = {}
    for noise in ("exponential", "gaussian"):
        panel.controls["noise"].value = noise
        for c in (4.0, 0.25):
            panel.controls["threshold"].value = c
            settle[noise, c] = panel.figure.axes[0].get_lines()[-1].get_xdata()[0]
    assert settle["exponential", 0.25] > settle["exponential", 4.0] + 0.2
    assert abs(settle["gaussian", 0.25]) < 1e-6 and abs(settle["gaussian", 4.0]) < 1e-6
