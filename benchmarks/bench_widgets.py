"""How long does one slider move take, compute and redraw, for every panel of the course?

Run:  python benchmarks/bench_widgets.py [--moves 25]

Every module in ``clipping_lib.lab.panels`` lists its panels in ``PANELS`` (name -> factory).
Each panel is built once, then each of its controls is moved through ``--moves`` values
across its range (options of a dropdown in turn), exactly as ``control.value = ...`` in
the browser would do. ``SliderPanel`` times every update: the Python side of a slider
move, from the new value to the new PNG. The bar is well under 100 ms at the median.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import statistics

import ipywidgets as widgets
import matplotlib
import numpy as np

import clipping_lib.lab.panels
from clipping_lib.lab.widgets import SliderPanel

BAR_MS = 100.0


def all_panels() -> dict[str, object]:
    """Every ``PANELS`` factory of every module in clipping_lib.lab.panels, by qualified name."""
    found = {}
    for module_info in pkgutil.iter_modules(clipping_lib.lab.panels.__path__):
        module = importlib.import_module(f"clipping_lib.lab.panels.{module_info.name}")
        for name, factory in getattr(module, "PANELS", {}).items():
            found[f"{module_info.name}: {name}"] = factory
    return found


def settings_across(control: widgets.ValueWidget, moves: int) -> list[tuple[str, object]]:
    """(attribute, value) pairs a person could set on ``control``, over its whole range."""
    if isinstance(control, widgets.widgets.widget_selection._Selection):
        return [("index", i % len(control.options)) for i in range(moves)]
    if isinstance(control, widgets.Checkbox | widgets.ToggleButton):
        return [("value", bool(i % 2)) for i in range(moves)]
    if isinstance(control, widgets.FloatLogSlider):  # min and max are exponents of `base`
        grid = control.base ** np.linspace(control.min, control.max, moves)
        return [("value", float(v)) for v in grid]
    if hasattr(control, "min") and hasattr(control, "max"):
        grid = np.linspace(control.min, control.max, moves)
        if isinstance(control.value, int):
            return [("value", round(v)) for v in grid]
        return [("value", float(v)) for v in grid]
    return []


def move_every_control(panel: SliderPanel, moves: int) -> list[float]:
    """Move each control across its range, then back to its default; return update seconds."""
    start = len(panel.update_seconds)
    for control in panel.controls.values():
        default = control.value
        for attribute, value in settings_across(control, moves):
            setattr(control, attribute, value)
        control.value = default
    return panel.update_seconds[start:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=25)
    args = parser.parse_args()
    matplotlib.use("Agg")
    print(
        f"| panel | updates | median ms | p95 ms | under {BAR_MS:.0f} ms |\n|---|---|---|---|---|"
    )
    for name, factory in all_panels().items():
        seconds = move_every_control(factory(), args.moves)
        ms = np.array(seconds) * 1e3
        median, p95 = statistics.median(ms), float(np.percentile(ms, 95))
        print(
            f"| {name} | {len(ms)} | {median:.1f} | {p95:.1f} | "
            f"{'yes' if median < BAR_MS else 'NO'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
