"""Notebook 09's panel: picks the chosen sweep run and its unclipped reference, and redraws."""

from __future__ import annotations

import numpy as np
import pytest

from clipping_lib.lab.adam_trace import AdamTrace
from clipping_lib.lab.panels.modern import (
    modern_panel,
    plot_final_loss,
    plot_spike_traces,
    run_curves,
)
from clipping_lib.lab.plots import new_figure
from clipping_lib.lab.sweep import CLEAN, SWEEP_PATH, load_sweep


@pytest.fixture(scope="module")
def sweep():
    return load_sweep(SWEEP_PATH)


def test_run_curves_pick_the_chosen_and_the_reference_run(sweep):
    curves = run_curves(sweep, 0.3, "clip 1.0", 1)
    chosen, reference = sweep.select(0.3, "clip 1.0", 1), sweep.select(0.3, "none", 1)
    np.testing.assert_array_equal(curves["loss"], sweep.loss[chosen])
    np.testing.assert_array_equal(curves["reference_norm"], sweep.grad_norm[reference])
    np.testing.assert_array_equal(curves["acted"], np.flatnonzero(sweep.clipped[chosen]))
    assert "clipped" in curves["readout"] and "lr = 0.3" in curves["readout"]
    assert "skipped" in run_curves(sweep, 0.3, "skip", 0)["readout"]
    with pytest.raises(ValueError, match="no run"):
        run_curves(sweep, 0.5, "none", 0)


def test_every_control_redraws_and_the_readout_follows(sweep):
    panel = modern_panel(result=sweep)
    for name, value, expected in [
        ("lr", 1.0, "lr = 1"),
        ("method", "autoclip", "autoclip"),
        ("seed", 2, "seed 2"),
        ("method", "skip", "skipped"),
        ("method", CLEAN, CLEAN),
    ]:
        before = panel.image.value
        panel.controls[name].value = value
        assert panel.image.value != before, name
        assert expected in panel.readout.value, (name, panel.readout.value)


def test_drawn_curves_are_the_chosen_run(sweep):
    panel = modern_panel(lr=0.1, method="zclip", seed=0, result=sweep)
    loss_line = panel.figure.axes[0].get_lines()[-1]
    np.testing.assert_array_equal(loss_line.get_ydata(), sweep.loss[sweep.select(0.1, "zclip", 0)])


def test_final_loss_plot_draws_every_setting_at_every_lr(sweep):
    ax = new_figure(6, 4).subplots()
    plot_final_loss(ax, sweep, baseline=3.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted([*sweep.methods, "unigram baseline"])
    means = sweep.final().mean(axis=2)
    for j, container in enumerate(ax.containers):
        np.testing.assert_allclose(container.lines[0].get_ydata(), means[:, j])


def test_spike_traces_plot_one_line_per_trace_and_panel():
    steps = np.arange(1.0, 11.0)
    trace = AdamTrace(steps, steps, steps, steps, steps, None)
    axes = new_figure(9, 3).subplots(1, 3)
    plot_spike_traces(axes, {"a": trace, "b": trace}, spike_at=5)
    assert [len(ax.get_lines()) for ax in axes] == [3, 3, 3]  # two traces and the spike mark
