"""Notebook 05's panel: picks the right run of a grid and redraws when a control moves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipping_lib.lab.panels import training as panel_module
from clipping_lib.lab.panels.training import (
    describe,
    make_grid,
    median_step_length,
    pick_run,
    plot_seeds,
    stability_map_figure,
    training_panel,
)
from clipping_lib.lab.plots import new_figure


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
    text = describe(pick_run(grid, 0.1, 0.3, "norm"), "norm", 0.3, length=20)
    assert text.startswith("norm clipping at c = 0.3: final loss")
    assert "trivial baseline 0.150" in text  # (1 - 2/T)/6 at T = 20


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
    assert len(panel.update_seconds) == 6  # built once, moved five times: every move redraws


def test_drawn_curves_are_the_chosen_runs(grids):
    panel = training_panel(lr=0.3, threshold=0.1, strategy="norm", length=20, grids=grids)
    chosen_loss = panel.figure.axes[0].get_lines()[1]
    expected = pick_run(grids[(20, "norm")], 0.3, 0.1, "norm")
    np.testing.assert_array_equal(chosen_loss.get_ydata(), expected.loss)


def test_unknown_length_is_refused():
    with pytest.raises(ValueError, match="length"):
        make_grid(15)


def test_median_step_length_is_lr_times_the_median_applied_norm(grids):
    grid = grids[(10, "norm")]
    steps = median_step_length(grid)
    assert steps.shape == grid.shape
    i, j = panel_module.LEARNING_RATES.index(1.0), panel_module.THRESHOLDS.index(0.1)
    run = grid.run(i, j)
    assert steps[i, j] == pytest.approx(1.0 * np.median(run.applied_norm))
    assert steps[i, j] <= 1.0 * 0.1 * (1 + 1e-6)  # a clipped step is at most lr * c long
    assert np.isnan(steps[grid.diverged]).all()


def test_stability_map_figure_writes_every_final_loss_and_nan(grids):
    grid = grids[(10, "norm")]
    figure = stability_map_figure(grid, 0.15)
    map_ax, step_ax = figure.axes[:2]  # then the two colour bars
    texts = [t.get_text() for t in map_ax.texts]
    assert len(texts) == grid.final_loss.size
    assert texts.count("NaN") == int(grid.diverged.sum())
    clipped_points = step_ax.collections[0].get_offsets()
    assert len(clipped_points) == grid.shape[0] * (grid.shape[1] - 1)


def test_plot_seeds_draws_each_seed_the_median_and_marks_divergence():
    figure = new_figure()
    ax = figure.subplots()
    values = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, np.nan, np.nan], [2.0, 3.0, 5.0, 6.0]])
    plot_seeds(ax, np.arange(4), values, color="k", label="runs")
    seed_lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    median = next(line for line in seed_lines if line.get_label() == "runs")
    np.testing.assert_allclose(median.get_ydata(), [2.0, 3.0, 4.0, 5.0])  # seeds still running
    marks = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 1
    smoothed = new_figure().subplots()
    plot_seeds(smoothed, np.arange(4), values[[0]], color="k", label="s", smooth=2)
    np.testing.assert_allclose(smoothed.get_lines()[-1].get_ydata(), [1.5, 2.5, 3.5])


def test_the_baseline_line_follows_the_length(grids):
    panel = training_panel(lr=0.3, threshold=0.1, strategy="norm", length=10, grids=grids)

    def baselines():
        return {round(float(line.get_ydata()[0]), 4) for line in panel.figure.axes[0].get_lines()
                if len(line.get_ydata()) == 2 and line.get_linestyle() == ":"}  # fmt: skip

    assert baselines() == {round(2 / 15, 4)}
    panel.controls["length"].value = 20
    assert baselines() == {0.15}
