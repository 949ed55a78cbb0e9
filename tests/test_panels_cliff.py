"""Notebook 06's panel: redraws the descent paths for every control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipping_lib.lab.landscape import descent_path, loss_surface
from clipping_lib.lab.panels.cliff import PANELS, cliff_panel, paths


@pytest.fixture(scope="module")
def small_surface():
    return loss_surface(torch.linspace(1, 9, 40), torch.linspace(-7, 1, 40))


def test_paths_are_the_unclipped_and_the_chosen_clipped_one():
    unclipped, clipped = paths(6.0, -4.5, 1.0, 0.5, "value", steps=30)
    reference = descent_path(6.0, -4.5, lr=1.0, steps=30, method="value", threshold=0.5)
    np.testing.assert_array_equal(clipped.points, reference.points)
    assert paths(6.0, -4.5, 1.0, 0.5, "none", steps=30)[1] is None
    np.testing.assert_array_equal(
        unclipped.points, descent_path(6.0, -4.5, lr=1.0, steps=30).points
    )


def test_every_control_redraws_and_the_readout_follows(small_surface):
    panel = cliff_panel(surface=small_surface)
    assert "3.39e+03" in panel.readout.value  # the default start meets the cliff
    for name, value, expected in [
        ("lr", 2.0, "lr x c = 1"),
        ("threshold", 0.25, "c = 0.25"),
        ("w0", 3.0, "no clipping"),
        ("b0", -1.0, "no clipping"),
        ("method", "value", "value clipping, c = 0.25"),
    ]:
        before = panel.image.value
        panel.controls[name].value = value
        assert panel.image.value != before, name
        assert expected in panel.readout.value, (name, panel.readout.value)
    clipped_line = panel.figure.axes[0].get_lines()[1]
    expected = descent_path(3.0, -1.0, lr=2.0, steps=100, method="value", threshold=0.25)
    np.testing.assert_array_equal(clipped_line.get_xydata(), expected.points)
    panel.controls["method"].value = "none"
    assert len(clipped_line.get_xdata()) == 0
    assert len(panel.update_seconds) == 7  # built once, moved six times: every move is timed


def test_controls_accept_their_extremes(small_surface):
    panel = cliff_panel(surface=small_surface)
    for name, control in panel.controls.items():
        if hasattr(control, "min"):
            for value in (control.min, control.max):
                control.value = value
                assert panel.readout.value, name


def test_registered_factory_builds():
    assert set(PANELS) == {"cliff"}
