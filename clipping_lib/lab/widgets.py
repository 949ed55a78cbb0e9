"""Slider panels: controls on the left, a figure on the right.

A panel is three things the notebooks and tests can use apart:

* a **pure function** (parameters in, data out) that lives in a ``clipping_lib.lab.panels``
  module and is unit-tested on its own;
* a ``draw(**values)`` callback that moves the artists of one long-lived figure to show
  that data (updating artists in place is much faster than building a new figure);
* this class, which wires the controls to ``draw`` and shows the figure as a PNG in an
  ``ipywidgets.Image``. Tests set ``panel.controls[name].value`` and read
  ``panel.image.value`` exactly as a slider move in the browser would.

The displayed panel also carries a static PNG, so notebooks stored with outputs show
the figure on GitHub or nbviewer, where no kernel runs the sliders.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping

import ipywidgets as widgets
from matplotlib.figure import Figure

from clipping_lib.lab.plots import figure_to_png


class SliderPanel(widgets.HBox):
    """Wire ``controls`` to ``draw(**values)`` and show ``figure`` as a PNG image."""

    def __init__(
        self,
        figure: Figure,
        controls: Mapping[str, widgets.ValueWidget],
        draw: Callable[..., None],
        *,
        readout: widgets.Widget | None = None,
    ) -> None:
        self.figure = figure
        self.controls = dict(controls)
        self.image = widgets.Image(format="png")
        self.readout = readout or widgets.HTML()
        self.update_seconds: list[float] = []
        self._draw = draw
        column = widgets.VBox(
            [*self.controls.values(), self.readout],
            layout=widgets.Layout(min_width="320px"),
        )
        # Wrap the figure below the controls when the notebook is too narrow for both.
        super().__init__(
            [column, self.image], layout=widgets.Layout(flex_flow="row wrap", align_items="center")
        )
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def values(self) -> dict[str, object]:
        """The current value of every control, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> None:
        """Redraw for the current control values and refresh the image; time it."""
        start = time.perf_counter()
        self._draw(**self.values)
        self.image.value = figure_to_png(self.figure)
        self.update_seconds.append(time.perf_counter() - start)

    def _on_change(self, _change: dict) -> None:
        self.update()

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle
