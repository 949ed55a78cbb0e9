r"""Panels for notebook 10: clipping before ``unscale_``, and per-variable against global.

* :func:`clip_order_panel`: the loss scale :math:`s` and the threshold :math:`c`; the norm
  the optimizer gets when clipping follows ``unscale_`` (:math:`\min(n, c)`) and when it
  precedes it (:math:`\min(n, c/s)`), for every true gradient norm :math:`n`. The pure
  computation is :func:`clipping_lib.lab.bugs.clip_order_norms`.
* :func:`clipnorm_panel`: the threshold :math:`c` against one model's per-variable
  gradient norms: total norm and direction after Keras-style ``clipnorm`` (each
  variable alone) and after global clipping. The pure computation is
  :func:`clipping_lib.lab.tools_check.clipnorm_view`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np

from clipping_lib.lab.bugs import clip_order_norms
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.tools_check import clipnorm_view
from clipping_lib.lab.widgets import SliderPanel

TRUE_NORMS = np.geomspace(1e-7, 1e3, 201)


def clip_order_panel(log2_scale: int = 16, max_norm: float = 1.0) -> SliderPanel:
    """Norm after clipping against the true norm, for clip-after and clip-before ``unscale_``."""
    figure = new_figure(6.4, 3.6)
    ax = figure.subplots()
    right, wrong = clip_order_norms(TRUE_NORMS, max_norm, 2.0**log2_scale)
    ax.plot(TRUE_NORMS, TRUE_NORMS, color=COLORS["original"], lw=0.8, ls=":", label="no clipping")
    (right_line,) = ax.plot(
        TRUE_NORMS, right, color=COLORS["norm"], lw=2.5, label="unscale_, then clip (right)"
    )
    (wrong_line,) = ax.plot(
        TRUE_NORMS, wrong, color=COLORS["diverged"], lw=1.8, label="clip, then unscale_ (wrong)"
    )
    threshold = ax.axvline(max_norm, color=COLORS["threshold"], ls="--", lw=1, label="c")
    effective = ax.axvline(
        max_norm / 2.0**log2_scale, color=COLORS["diverged"], ls="--", lw=1, label="c / s"
    )
    ax.set(xscale="log", yscale="log", xlim=(1e-7, 1e3), ylim=(1e-9, 1e3))
    ax.set(xlabel="true gradient norm ‖g‖", ylabel="norm the optimizer gets")
    ax.set_title("clipping the scaled gradient moves the threshold to c / s", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    freeze_static_artists(figure, [right_line, wrong_line, threshold, effective])
    readout = widgets.HTML()

    def draw(log2_scale: int, max_norm: float) -> None:
        scale = 2.0**log2_scale
        right, wrong = clip_order_norms(TRUE_NORMS, max_norm, scale)
        right_line.set_ydata(right)
        wrong_line.set_ydata(wrong)
        threshold.set_xdata([max_norm, max_norm])
        effective.set_xdata([max_norm / scale, max_norm / scale])
        one_right, one_wrong = clip_order_norms(np.array([1.0]), max_norm, scale)
        readout.value = (
            f"loss scale s = 2^{log2_scale} = {scale:.6g}, c = {max_norm:.3g}<br>"
            f"effective threshold of the wrong order: c / s = {max_norm / scale:.3g}<br>"
            f"a gradient of norm 1 leaves with norm {one_right[0]:.3g} (right) "
            f"and {one_wrong[0]:.3g} (wrong)"
        )

    controls = {
        "log2_scale": widgets.IntSlider(value=log2_scale, min=0, max=24, description="log₂ s"),
        "max_norm": widgets.FloatLogSlider(
            value=max_norm, base=10, min=-2, max=2, step=0.05, description="c"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


def clipnorm_panel(
    variable_norms: Sequence[float], names: Sequence[str], max_norm: float = 1.0
) -> SliderPanel:
    """Total norm and cosine after per-variable and global clipping as ``c`` moves."""
    norms = np.asarray(variable_norms, dtype=np.float64)
    if len(names) != len(norms):
        raise ValueError(f"{len(names)} names for {len(norms)} variable norms")
    grid = np.geomspace(0.01, 100.0, 161)
    curves = clipnorm_view(norms, grid)
    figure = new_figure(9.0, 3.6)
    norm_ax, bar_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    norm_ax.plot(grid, curves.per_variable_norm, color=COLORS["value"], label="clipnorm (each)")
    norm_ax.plot(grid, curves.global_norm, color=COLORS["norm"], label="global_clipnorm")
    norm_ax.plot(grid, grid, color=COLORS["threshold"], ls=":", lw=1, label="c")
    first = clipnorm_view(norms, [max_norm])
    (marker_each,) = norm_ax.plot(
        [max_norm], first.per_variable_norm, "o", color=COLORS["value"], ms=6
    )
    (marker_global,) = norm_ax.plot([max_norm], first.global_norm, "o", color=COLORS["norm"])
    norm_ax.set(xscale="log", yscale="log", xlabel="threshold c", ylabel="total norm after")
    norm_ax.set_title("per variable lets the total exceed c", fontsize=10)
    norm_ax.legend(fontsize=7, loc="upper left")
    index = np.arange(len(norms))
    bar_ax.bar(index, norms, color="0.8", label="before")
    (after,) = bar_ax.plot(
        index,
        np.minimum(norms, max_norm),
        "_",
        ms=14,
        mew=3,
        color=COLORS["value"],
        label="after clipnorm",
    )
    level = bar_ax.axhline(max_norm, color=COLORS["threshold"], ls="--", lw=1, label="c")
    bar_ax.set_xticks(index, list(names), fontsize=7, rotation=20)
    bar_ax.set(yscale="log", ylim=(min(norms.min(), 0.01) / 2, max(norms.max(), 100) * 2))
    bar_ax.set_ylabel("gradient norm of each variable")
    bar_ax.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    freeze_static_artists(figure, [marker_each, marker_global, after, level])
    readout = widgets.HTML()

    def draw(max_norm: float) -> None:
        view = clipnorm_view(norms, [max_norm])
        marker_each.set_data([max_norm], view.per_variable_norm)
        marker_global.set_data([max_norm], view.global_norm)
        after.set_ydata(np.minimum(norms, max_norm))
        level.set_ydata([max_norm, max_norm])
        readout.value = (
            f"c = {max_norm:.3g}: clipnorm rescales {int(view.variables_clipped[0])} of "
            f"{len(norms)} variables<br>total norm after: clipnorm "
            f"{view.per_variable_norm[0]:.3g}, global {view.global_norm[0]:.3g}<br>"
            f"cosine to the raw gradient: clipnorm {view.per_variable_cosine[0]:.4f}, global 1"
        )

    controls = {
        "max_norm": widgets.FloatLogSlider(
            value=max_norm, base=10, min=-2, max=2, step=0.05, description="c"
        )
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {
    "clip_order": clip_order_panel,
    "clipnorm": lambda: clipnorm_panel([3.0, 0.5, 1.2, 0.2], ["W1", "b1", "W2", "b2"]),
}
