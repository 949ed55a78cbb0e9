"""Notebook 10's panels: slider moves redraw and the readouts follow the pure functions."""

from __future__ import annotations

import pytest

from clipping_lib.lab.panels.tools import PANELS, clipnorm_panel


def test_clip_order_panel_moves_with_both_sliders():
    panel = PANELS["clip_order"]()
    before = panel.image.value
    panel.controls["log2_scale"].value = 0
    assert "c / s = 1" in panel.readout.value  # no scaling: the order does not matter
    assert panel.image.value != before
    panel.controls["log2_scale"].value = 10
    panel.controls["max_norm"].value = 2.0
    assert "c / s = 0.00195" in panel.readout.value


def test_clipnorm_panel_counts_the_variables_it_clips():
    panel = PANELS["clipnorm"]()
    before = panel.image.value
    panel.controls["max_norm"].value = 1.0
    assert "rescales 2 of 4 variables" in panel.readout.value
    panel.controls["max_norm"].value = 100.0
    assert "rescales 0 of 4" in panel.readout.value and panel.image.value != before
    with pytest.raises(ValueError, match="names"):
        clipnorm_panel([1.0, 2.0], ["only one"])
