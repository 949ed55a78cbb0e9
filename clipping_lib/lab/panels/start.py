"""Lesson 00's panel parts: one gradient vector and its clipped copy, as arrows in 2-D."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrow
from torch import Tensor

from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure

__all__ = ["arrow_figure"]


def arrow_figure(g: Tensor, title: str, color: str = COLORS["norm"]) -> tuple[Figure, FancyArrow]:
    """A square figure with ``g`` drawn as a grey arrow, and a second arrow to move.

    The axes reach a little past ``g`` whatever its size. Returns the figure and the
    moving arrow, set to zero length; a panel's ``draw`` moves it with
    ``arrow.set_data(dx=..., dy=...)``. Everything else is frozen, so a redraw paints only
    the moving arrow.
    """
    reach = float(g.abs().max()) * 1.15 + 0.5
    figure = new_figure(4.0, 4.0)
    ax = figure.add_subplot()
    ax.set(xlim=(-0.5, reach), ylim=(-0.5, reach), aspect="equal", title=title)
    width = reach / 130
    ax.arrow(0, 0, *g.tolist(), color=COLORS["original"], width=width, length_includes_head=True)
    moving = ax.arrow(0, 0, 0, 0, color=color, width=1.5 * width, length_includes_head=True)
    figure.tight_layout()
    freeze_static_artists(figure, [moving])
    return figure, moving
