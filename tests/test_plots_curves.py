"""plot_curves: the line helper notebook 03 uses for its loss and update-length plots."""

import matplotlib.colors as mcolors
import numpy as np
import pytest

from clipping_lib.lab.plots import COLORS, new_figure, plot_curves


def test_one_line_per_curve_with_the_idea_colours_and_a_reference_level():
    ax = new_figure().add_subplot()
    curves = {"right": [3.0, 2.0, 1.0], "wrong": [1.0, 10.0, 100.0]}
    styles = {"right": ("norm", "-"), "wrong": ("diverged", ":")}
    plot_curves(ax, curves, styles, log=True, reference=(0.1, "lr · c"), title="t", ylabel="y")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"right", "wrong", "lr · c"}
    np.testing.assert_array_equal(lines["wrong"].get_ydata(), [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(lines["right"].get_xdata(), [0, 1, 2])  # x is the step
    assert mcolors.same_color(lines["right"].get_color(), COLORS["norm"])
    assert lines["wrong"].get_linestyle() == ":"
    assert mcolors.same_color(lines["lr · c"].get_color(), COLORS["threshold"])
    assert list(lines["lr · c"].get_ydata()) == [0.1, 0.1]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["right", "wrong", "lr · c"]


def test_unstyled_curves_get_default_colours_and_no_legend_on_request():
    ax = new_figure().add_subplot()
    plot_curves(ax, {"a": [1, 2], "b": [2, 1]}, legend=None, xlabel="micro-batch")
    a, b = ax.get_lines()
    assert not mcolors.same_color(a.get_color(), b.get_color())
    assert ax.get_legend() is None and ax.get_xlabel() == "micro-batch"
    assert ax.get_yscale() == "linear"


def test_a_bad_axis_setting_fails_loudly():
    ax = new_figure().add_subplot()
    with pytest.raises(AttributeError):
        plot_curves(ax, {"a": [1.0]}, no_such_setting=1)
