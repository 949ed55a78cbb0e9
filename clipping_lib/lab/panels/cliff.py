r"""Panel for notebook 06: descent paths on Pascanu et al.'s cliff, with and without clipping.

The loss surface of :mod:`clipping_lib.lab.landscape` is computed once, on a fixed grid, when
the panel is built; each slider move only runs two descent paths of ``PATH_STEPS`` steps
(Python floats, a few milliseconds) and moves their lines.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets
import torch

from clipping_lib.lab.landscape import DescentPath, Surface, descent_path, loss_surface
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel

W_RANGE = (1.0, 9.0)
B_RANGE = (-7.0, 1.0)
GRID_POINTS = 240
PATH_STEPS = 100
DEFAULT_START = (6.0, -4.5)
METHODS = ("none", "norm", "value")


def panel_surface(points: int = GRID_POINTS) -> Surface:
    """The loss surface over the panel's ``(w, b)`` window."""
    return loss_surface(
        torch.linspace(*W_RANGE, points, dtype=torch.float64),
        torch.linspace(*B_RANGE, points, dtype=torch.float64),
    )


def paths(
    w0: float, b0: float, lr: float, threshold: float, method: str, steps: int = PATH_STEPS
) -> tuple[DescentPath, DescentPath | None]:
    """The unclipped path and, unless ``method == "none"``, the clipped one, from one start."""
    unclipped = descent_path(w0, b0, lr=lr, steps=steps)
    if method == "none":
        return unclipped, None
    return unclipped, descent_path(w0, b0, lr=lr, steps=steps, method=method, threshold=threshold)


def _describe(path: DescentPath) -> str:
    w, b = path.points[-1]
    return (
        f"largest step {path.largest_step:.3g}, ends at (w, b) = ({w:.2f}, {b:.2f}) "
        f"with loss {path.loss[-1]:.4f}"
    )


def cliff_panel(
    lr: float = 1.0,
    threshold: float = 0.5,
    w0: float = DEFAULT_START[0],
    b0: float = DEFAULT_START[1],
    method: str = "norm",
    *,
    surface: Surface | None = None,
) -> SliderPanel:
    """Loss surface (fixed) with the unclipped and the clipped descent paths (redrawn)."""
    surface = surface or panel_surface()
    figure = new_figure(5.6, 4.6)
    ax = figure.add_subplot()
    image = ax.imshow(
        surface.loss.numpy(),
        origin="lower",
        extent=surface.extent,
        aspect="auto",
        cmap="viridis",
        vmin=0.0,
        vmax=0.5,
    )
    figure.colorbar(image, ax=ax, label="loss $(\\sigma(x_{50}) - 0.7)^2$")
    ax.set(xlim=W_RANGE, ylim=B_RANGE, xlabel="recurrent weight w", ylabel="bias b")
    ax.set_title("gradient descent on the cliff", fontsize=10)
    (unclipped_line,) = ax.plot([], [], "o-", ms=2.5, lw=1.2, color="white", label="no clipping")
    (clipped_line,) = ax.plot([], [], "o-", ms=2.5, lw=1.2, color=COLORS["norm"], label="clipped")
    (start,) = ax.plot([], [], "*", ms=12, color=COLORS["threshold"], mec="white", label="start")
    ax.legend(loc="upper right", fontsize=7, facecolor="0.8")
    figure.tight_layout()
    freeze_static_artists(figure, [unclipped_line, clipped_line, start])
    readout = widgets.HTML()

    def draw(lr: float, threshold: float, w0: float, b0: float, method: str) -> None:
        unclipped, clipped = paths(w0, b0, lr, threshold, method)
        unclipped_line.set_data(unclipped.points[:, 0], unclipped.points[:, 1])
        start.set_data([w0], [b0])
        lines = [f"<b>no clipping</b>: {_describe(unclipped)}"]
        if clipped is None:
            clipped_line.set_data([], [])
        else:
            clipped_line.set_data(clipped.points[:, 0], clipped.points[:, 1])
            clipped_line.set_color(COLORS[method])
            ratio = unclipped.largest_step / clipped.largest_step
            lines.append(f"<b>{method} clipping, c = {threshold:g}</b>: {_describe(clipped)}")
            lines.append(
                f"largest step ratio (none / {method}): {ratio:.3g}; lr x c = {lr * threshold:.3g}"
            )
        readout.value = "<br>".join(lines)

    controls = {
        "lr": widgets.FloatSlider(
            value=lr, min=0.1, max=5.0, step=0.1, description="learning rate"
        ),
        "threshold": widgets.FloatSlider(
            value=threshold, min=0.05, max=5.0, step=0.05, description="threshold c"
        ),
        "w0": widgets.FloatSlider(
            value=w0, min=W_RANGE[0], max=W_RANGE[1], step=0.1, description="start w₀"
        ),
        "b0": widgets.FloatSlider(
            value=b0, min=B_RANGE[0], max=B_RANGE[1], step=0.1, description="start b₀"
        ),
        "method": widgets.ToggleButtons(options=METHODS, value=method, description="clipping"),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"cliff": cliff_panel}
