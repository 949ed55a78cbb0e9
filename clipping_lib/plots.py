"""Shared figure helpers: one colour per idea across the course, and figure -> PNG."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

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
