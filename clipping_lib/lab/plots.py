"""Shared figure helpers: one colour per idea, figure -> PNG, and fast redraws for panels."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from clipping_lib.monitor import NormHistory

# One colour per idea, used by every notebook so a learner reads plots at a glance.
COLORS = {
    "original": "#444444",
    "value": "#d95f02",  # value (element-wise) clipping
    "norm": "#1b9e77",  # norm clipping
    "threshold": "#7570b3",
    "diverged": "#e7298a",
    "adaptive": "#66a61e",
}


def new_figure(width: float = 8.0, height: float = 3.6, dpi: int = 80, **figure_kw) -> Figure:
    """A figure detached from pyplot: it is shown only where it is displayed on purpose.

    Slider panels redraw it many times, so it has no automatic layout engine (which
    costs a full extra layout pass per draw); call ``figure.tight_layout()`` once after
    building the axes.
    """
    figure = Figure(figsize=(width, height), dpi=dpi, **figure_kw)
    FigureCanvasAgg(figure)
    return figure


def figure_to_png(figure: Figure) -> bytes:
    """Render ``figure`` at its own dpi to PNG bytes: one Agg draw, light compression."""
    canvas = figure.canvas
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


class _StaticPixels(Artist):
    """The pixels of a figure's static artists, painted first on every draw."""

    def __init__(self, rgba: np.ndarray) -> None:
        super().__init__()
        self._rgba = np.ascontiguousarray(rgba[::-1])  # Agg images are bottom-up
        self.set_zorder(-10)

    def draw(self, renderer) -> None:
        size = (getattr(renderer, "height", None), getattr(renderer, "width", None))
        if size != self._rgba.shape[:2]:
            raise RuntimeError(
                "this figure's static artists were frozen into pixels at its own dpi; "
                "render it with clipping_lib.lab.plots.figure_to_png, not at another size or format"
            )
        gc = renderer.new_gc()
        renderer.draw_image(gc, 0, 0, self._rgba)
        gc.restore()


def freeze_static_artists(figure: Figure, dynamic: list[Artist]) -> None:
    """Render all but ``dynamic`` once; later draws paint those pixels, then ``dynamic``.

    Ticks, labels, legends and static curves cost most of a full draw; after this call
    a draw costs a copy of the frozen pixels plus the dynamic artists (about 10x
    faster). The axes keep their transforms, so dynamic artists land where they did,
    but limits, ticks and labels are frozen: set them before calling, never after.
    Dynamic artists are drawn above every static one. The figure then renders only as
    a raster of its own size (``figure_to_png``); other sizes or formats raise.
    """
    for artist in dynamic:
        artist.set_visible(False)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba()).copy()
    for artist in dynamic:
        artist.set_visible(True)
    keep = {id(artist) for artist in dynamic}
    for ax in figure.axes:
        for child in ax.get_children():
            if id(child) not in keep:
                child.set_visible(False)
    figure.patch.set_visible(False)
    for text in figure.texts:
        text.set_visible(False)
    figure.add_artist(_StaticPixels(pixels))


def plot_curves(
    ax,
    curves: dict[str, list[float]],
    styles: dict[str, tuple[str, str]] | None = None,
    *,
    log: bool = False,
    reference: tuple[float, str] | None = None,
    legend: str | None = "best",
    **axis_settings,
) -> None:
    """One line per named curve on ``ax`` (x = step), a dashed reference level, a legend.

    ``styles[name]`` is ``(colour, linestyle)``: a key of :data:`COLORS` or any matplotlib
    colour, and a line style; missing names get the next default colour, solid.
    ``reference`` is ``(y, label)``, drawn in the threshold colour. ``log`` puts the
    y axis on a log scale; ``axis_settings`` (xlabel, ylabel, title, ...) go to ``ax.set``.
    """
    styles = styles or {}
    for name, values in curves.items():
        color, linestyle = styles.get(name, (None, "-"))
        ax.plot(values, color=COLORS.get(color, color), ls=linestyle, lw=2, label=name)
    if reference is not None:
        level, label = reference
        ax.axhline(level, color=COLORS["threshold"], ls="--", lw=1, label=label)
    if log:
        ax.set_yscale("log")
    ax.set(**{"xlabel": "step", **axis_settings})
    if legend:
        ax.legend(loc=legend, fontsize="small")


def plot_norm_history(
    ax: Axes,
    history: NormHistory,
    *,
    label: str = "norm before clipping",
    color: str = COLORS["original"],
    spikes: bool = False,
) -> dict:
    """Draw the norm per step (log scale), the threshold, and the clipped steps.

    Returns the artists by name (``"norm"``, ``"threshold"``, ``"clipped"`` and, with
    ``spikes=True``, ``"spikes"``) so a panel can move them with ``set_data``.
    """
    steps = np.arange(len(history))
    finite = np.where(np.isfinite(history.threshold), history.threshold, np.nan)
    artists = {
        "norm": ax.plot(steps, history.norm, color=color, lw=1.0, label=label)[0],
        "threshold": ax.plot(
            steps, finite, color=COLORS["threshold"], lw=1.5, ls="--", label="threshold"
        )[0],
        "clipped": ax.plot(
            steps[history.clipped],
            history.norm[history.clipped],
            ls="none",
            marker="o",
            ms=3,
            color=COLORS["norm"],
            label=f"clipped ({history.clip_rate:.0%} of steps)",
        )[0],
    }
    if spikes:
        index = history.spikes()
        artists["spikes"] = ax.plot(
            index, history.norm[index], ls="none", marker="^", ms=7, mfc="none",
            color=COLORS["diverged"], label="spike (> 5x recent median)",
        )[0]  # fmt: skip
    ax.set(yscale="log", xlabel="step", ylabel="global gradient norm")
    ax.legend(loc="upper right", fontsize="small")
    return artists
