"""Notebook 05's panel: picks the right run of a grid and redraws when a control moves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipping_lib.panels import training as panel_module
from clipping_lib.panels.training import describe, make_grid, pick_run, training_panel


@pytest.fixture(scope="module")
def grids():
    """Short grids (30 steps) for every length and method the test moves through."""
    return {
        (length, method): make_grid(length, method, steps=30)
        for length in (10, 20)
        for method in ("norm", "value")
    }


def test_pick_run_returns_the_run_at_that_lr_and_threshold(grids):
    grid = grids[(20, "norm")]
    run = pick_run(grid, 0.3, 0.1, "norm")
    i, j = panel_module.LEARNING_RATES.index(0.3), panel_module.THRESHOLDS.index(0.1)
    np.testing.assert_array_equal(run.loss, grid.history.loss[i * grid.shape[1] + j])
    unclipped = pick_run(grid, 10.0, 0.1, "none")
    assert unclipped.diverged and math.isinf(grid.thresholds[-1])
    with pytest.raises(ValueError, match="strategy"):
        pick_run(grid, 0.3, 0.1, "adaptive")
    with pytest.raises(ValueError, match="lr"):
        pick_run(grid, 0.5, 0.1, "norm")


def test_describe_states_the_outcome(grids):
    grid = grids[(20, "norm")]
    assert "diverged" in describe(pick_run(grid, 10.0, 0.1, "none"), "none", 0.1)
    text = describe(pick_run(grid, 0.1, 0.3, "norm"), "norm", 0.3)
    assert text.startswith("norm clipping at c = 0.3: final loss")


def test_every_control_redraws_and_the_readout_follows(grids, monkeypatch):
    monkeypatch.setattr(panel_module, "make_grid", lambda *a, **k: pytest.fail("recomputed"))
    panel = training_panel(grids=grids)
    for name, value, expected in [
        ("lr", 0.03, "lr = 0.03"),
        ("threshold", 3.0, "c = 3"),
        ("strategy", "value", "value clipping at c = 3"),
        ("length", 20, "T = 20"),
        ("strategy", "none", "no clipping: final loss"),
    ]:
        before = panel.image.value
        panel.controls[name].value = value
        assert panel.image.value != before, name
        assert expected in panel.readout.value, (name, panel.readout.value)
    assert np.median(panel.update_seconds) < 0.5


def test_drawn_curves_are_the_chosen_runs(grids):
    panel = training_panel(lr=0.3, threshold=0.1, strategy="norm", length=20, grids=grids)
    chosen_loss = panel.figure.axes[0].get_lines()[1]
    expected = pick_run(grids[(20, "norm")], 0.3, 0.1, "norm")
    np.testing.assert_array_equal(chosen_loss.get_ydata(), expected.loss)


def test_unknown_length_is_refused():
    with pytest.raises(ValueError, match="length"):
        make_grid(15)
