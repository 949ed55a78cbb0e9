r"""Frames of the slider panels for the static website, drawn by each panel's own ``draw``.

The website has no kernel, so a panel there cannot compute. Instead, when the site is
built, :func:`render_lesson` runs a lesson's code cells in a fresh kernel (as
``scripts/execute_notebooks.py`` does) up to its last panel, and each time a cell
displays a :class:`~clipping_lib.lab.widgets.SliderPanel`, the panel is swept through a
set of control settings; for each setting it keeps the picture and the readout. The
site's script (``site/_static/live_panels.js``) swaps them as the reader moves a control.

**Which settings.** Each control gets a few values (:func:`sweep_values`): its default and
up to :data:`SLIDER_VALUES` values spread over its range (exponents for a log slider),
every option of a toggle or a list. A *state* is one index per control. The frames are

* the default state;
* each control moved alone through its values, every other control at its default;
* the grid of the first two controls (in the panel's order: by convention the pair that
  teaches most, e.g. learning rate x threshold), every other control at its default.

A reader who moves a third control while a grid control is off its default sees the
grid control return to its default: the controls always show the setting of the figure.

**Pictures.** A panel whose figure froze its static artists
(:func:`~clipping_lib.lab.plots.freeze_static_artists`) is stored as one background (the
frozen pixels) and one *overlay* per state: the moving artists on a transparent canvas,
which the page stacks on the background. The two compose to the figure the notebook
shows up to the rounding of alpha blending. A panel that froze nothing stores whole
figures. Pictures are lossless WebP (smaller than PNG for these overlays; both are
measured by ``--measure``); identical pictures are stored once.

The manifest (``manifest.json`` in the panel's folder) holds the controls (name, label,
kind, value labels, default index), the grid pair, the background's file and, per state
key (the indices joined by ``.``), the picture's file and the readout's HTML.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from clipping_lib.lab import plots
from clipping_lib.lab.widgets import SliderPanel

__all__ = [
    "PANEL_BUDGET",
    "PANEL_MIME",
    "SLIDER_VALUES",
    "control_spec",
    "is_current",
    "lesson_key",
    "lesson_panel_cells",
    "library_files",
    "panel_states",
    "record_displayed_panels",
    "render_displayed",
    "render_lesson",
    "render_panel",
    "sweep_values",
    "write_key",
]

SLIDER_VALUES = 9  # values a slider is swept over, its default included
PANEL_BUDGET = 2**20  # bytes of one panel's folder; over it, sliders get fewer values
MAX_OPTIONS = 12  # options of a list kept (evenly spaced, the default included)
PANEL_MIME = "application/vnd.jupyter.widget-view+json"
FORMAT_VERSION = 1  # bump when the manifest or the pictures change meaning

_DISPLAYED: list[SliderPanel] = []


# ------------------------------------------------------------------ controls and states


def _is_selection(control: widgets.ValueWidget) -> bool:
    return isinstance(control, widgets.widgets.widget_selection._Selection)


def _option_labels(control: widgets.ValueWidget) -> list[str]:
    return [str(o[0]) if isinstance(o, tuple) else str(o) for o in control.options]


def _format(value: float, spec: str) -> str:
    try:
        return format(value, spec)
    except (ValueError, TypeError):
        return f"{value:g}"


def _spread(count: int, default: int, keep: int) -> list[int]:
    """Up to ``keep`` indices of ``range(count)``, evenly spaced, ends and default included."""
    if count <= keep:
        return list(range(count))
    picked = {round(x) for x in np.linspace(0, count - 1, keep - 1)} | {default}
    return sorted(picked)


def sweep_values(control: widgets.ValueWidget, keep: int = SLIDER_VALUES) -> tuple[list, int]:
    """The values a control is swept over, and the index of its default among them.

    A slider: ``keep - 1`` points evenly spread over ``[min, max]`` (over the exponents for
    a ``FloatLogSlider``), snapped to its step, plus its default. A selection: its option
    indices (at most :data:`MAX_OPTIONS`). A checkbox: ``False, True``. Other widgets
    (text boxes, buttons) are not swept: a single value, the default.
    """
    if _is_selection(control):
        indices = _spread(len(control.options), control.index, MAX_OPTIONS)
        return indices, indices.index(control.index)
    if isinstance(control, widgets.Checkbox | widgets.ToggleButton):
        return [False, True], int(bool(control.value))
    if not (hasattr(control, "min") and hasattr(control, "max")):
        return [control.value], 0
    default = control.value
    log = isinstance(control, widgets.FloatLogSlider)
    low, high = control.min, control.max
    step = getattr(control, "step", None) or 0
    points = np.linspace(low, high, keep - 1)
    if step:
        points = low + np.round((points - low) / step) * step
    values = [control.base**p if log else p for p in points]
    if isinstance(default, int) and not isinstance(default, bool):
        values = [int(np.rint(v)) for v in values]
    else:
        values = [float(round(v, 12)) for v in values]
    values = sorted(set(values) - {default} | {default})
    return values, values.index(default)


def control_spec(name: str, control: widgets.ValueWidget, keep: int = SLIDER_VALUES) -> dict:
    """What the page needs to draw one control: its kind, label and value labels."""
    values, default = sweep_values(control, keep)
    if _is_selection(control):
        labels = [_option_labels(control)[i] for i in values]
        kind = "range" if isinstance(control, widgets.SelectionSlider) else "options"
    elif isinstance(control, widgets.Checkbox | widgets.ToggleButton):
        labels, kind = ["off", "on"], "checkbox"
    else:
        spec = getattr(control, "readout_format", "g") or "g"
        labels, kind = [_format(v, spec) for v in values], "range"
    return {
        "name": name,
        "label": control.description or name,
        "kind": kind,
        "labels": labels,
        "default": default,
    }


def panel_states(counts: Sequence[int], defaults: Sequence[int]) -> list[tuple[int, ...]]:
    """The states drawn for a panel (module docstring): default, one control at a time,
    and the grid of the first two controls; in drawing order, without repeats."""
    states = [tuple(defaults)]
    for position, count in enumerate(counts):
        for index in range(count):
            state = list(defaults)
            state[position] = index
            states.append(tuple(state))
    if len(counts) >= 2 and counts[0] > 1 and counts[1] > 1:
        for i, j in itertools.product(range(counts[0]), range(counts[1])):
            states.append((i, j, *defaults[2:]))
    return list(dict.fromkeys(states))


# ------------------------------------------------------------------ pictures


def _frozen_pixels(figure: Figure):
    found = [a for a in figure.artists if isinstance(a, plots._StaticPixels)]
    return found[0] if found else None


def _encode(rgba: np.ndarray, fmt: str) -> bytes:
    image = Image.fromarray(rgba, "RGBA")
    if not (rgba[..., 3] < 255).any():
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "webp":
        image.save(buffer, format="webp", lossless=True, quality=100, method=4)
    else:
        image.save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def _canvas_rgba(figure: Figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba()).copy()


def _picture(figure: Figure) -> np.ndarray:
    """The moving artists alone (over transparency) if the figure is frozen, else all."""
    frozen = _frozen_pixels(figure)
    if frozen is None:
        return _canvas_rgba(figure)
    frozen.draw = lambda renderer: None  # _StaticPixels paints even when hidden
    try:
        return _canvas_rgba(figure)
    finally:
        del frozen.draw


def _set_state(panel: SliderPanel, specs: list[tuple[str, list]], state: tuple[int, ...]) -> None:
    for (name, values), index in zip(specs, state, strict=True):
        control = panel.controls[name]
        if _is_selection(control):
            if control.index != values[index]:
                control.index = values[index]
        elif control.value != values[index]:
            control.value = values[index]


def render_panel(
    panel: SliderPanel, folder: Path, fmt: str = "webp", keep: int = SLIDER_VALUES
) -> dict:
    """Sweep ``panel`` (module docstring), write its pictures and manifest into ``folder``.

    ``keep`` is the number of values per slider. The panel is left at its defaults.
    Returns the manifest, with ``bytes`` (the folder's total) and ``frames_drawn`` added.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sweeps = [(name, *sweep_values(c, keep)) for name, c in panel.controls.items()]
    specs = [(name, values) for name, values, _ in sweeps]
    defaults = [default for _, _, default in sweeps]
    states = panel_states([len(values) for _, values in specs], defaults)
    frozen = _frozen_pixels(panel.figure)
    manifest: dict = {
        "version": FORMAT_VERSION,
        "controls": [control_spec(name, c, keep) for name, c in panel.controls.items()],
        "grid": [specs[0][0], specs[1][0]] if len(specs) >= 2 else None,
        "size": list(panel.figure.canvas.get_width_height(physical=True)),
        "background": None,
        "frames": {},
    }
    if frozen is not None:
        background = _encode(np.ascontiguousarray(frozen._rgba[::-1]), fmt)
        manifest["background"] = f"background.{fmt}"
        (folder / manifest["background"]).write_bytes(background)
    names: dict[str, str] = {}
    for state in states:
        _set_state(panel, specs, state)
        data = _encode(_picture(panel.figure), fmt)
        digest = hashlib.sha256(data).hexdigest()[:16]
        if digest not in names:
            names[digest] = f"{len(names):03d}.{fmt}"
            (folder / names[digest]).write_bytes(data)
        readout = getattr(panel.readout, "value", "")
        key = ".".join(map(str, state))
        manifest["frames"][key] = {"image": names[digest], "readout": readout}
    _set_state(panel, specs, tuple(defaults))
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=0))
    total = sum(p.stat().st_size for p in folder.iterdir())
    return {**manifest, "bytes": total, "frames_drawn": len(states)}


# ------------------------------------------------------------------ in the lesson's kernel


def record_displayed_panels() -> None:
    """From now on, remember every SliderPanel this process displays (in display order)."""
    if getattr(SliderPanel._repr_mimebundle_, "_records", False):
        return
    original = SliderPanel._repr_mimebundle_

    def recording(self, **kwargs):
        _DISPLAYED.append(self)
        return original(self, **kwargs)

    recording._records = True
    SliderPanel._repr_mimebundle_ = recording


def render_displayed(out: str, cell_id: str, expected: int) -> None:
    """Render the panels displayed since the last call into ``out/<cell_id>-<k>``.

    ``expected`` is how many panels the stored notebook shows for that cell; a different
    count means the kernel did not run the lesson as it was executed, and raises.
    """
    panels = list(_DISPLAYED)
    _DISPLAYED.clear()
    if len(panels) != expected:
        raise RuntimeError(
            f"cell {cell_id} displayed {len(panels)} panels; the notebook stores {expected}"
        )
    summary = {}
    for k, panel in enumerate(panels):
        keep = SLIDER_VALUES
        manifest = render_panel(panel, Path(out) / f"{cell_id}-{k}", keep=keep)
        while manifest["bytes"] > PANEL_BUDGET and keep > 3:
            keep -= 2  # fewer values per slider, until the frames fit the budget
            manifest = render_panel(panel, Path(out) / f"{cell_id}-{k}", keep=keep)
        if manifest["bytes"] > PANEL_BUDGET:
            raise RuntimeError(f"panel {cell_id}-{k}: {manifest['bytes']} bytes of frames")
        summary[f"{cell_id}-{k}"] = {"frames": manifest["frames_drawn"], "bytes": manifest["bytes"]}
    summary_path = Path(out) / "summary.json"
    known = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary_path.write_text(json.dumps({**known, **summary}, indent=1))


# ------------------------------------------------------------------ a lesson


def lesson_panel_cells(notebook: dict) -> list[tuple[int, str, int]]:
    """(cell index, cell id, panels displayed) for each code cell that stores a panel."""
    found = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        count = sum(PANEL_MIME in o.get("data", {}) for o in cell.get("outputs", []))
        if count:
            found.append((index, cell.get("id", f"cell{index}"), count))
    return found


def library_files() -> list[str]:
    """The clipping_lib source files this process has imported, relative to the package."""
    package = Path(__file__).resolve().parents[1]
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(package):
            found.add(Path(file).resolve().relative_to(package).as_posix())
    return sorted(found)


def lesson_key(notebook: dict, files: Sequence[str]) -> str:
    """What a lesson's frames depend on, as a hex digest: the code run, the stored panel
    pictures, the library ``files`` the run imported and the versions that draw."""
    import matplotlib
    import PIL
    import torch

    cells = lesson_panel_cells(notebook)
    last = cells[-1][0] if cells else -1
    digest = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for cell in notebook["cells"][: last + 1]:
        if cell["cell_type"] == "code":
            digest.update("".join(cell["source"]).encode())
            for output in cell.get("outputs", []):
                digest.update(str(output.get("data", {}).get("image/png", "")).encode())
    package = Path(__file__).resolve().parents[1]
    for name in files:
        digest.update(name.encode())
        path = package / name
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    for module in (matplotlib, PIL, torch, np):
        digest.update(f"{module.__name__} {module.__version__}".encode())
    return digest.hexdigest()


def write_key(out: str, notebook_path: str) -> None:
    """In the lesson's kernel, after its last panel: record what the frames depend on."""
    notebook = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    files = library_files()
    key = {"files": files, "key": lesson_key(notebook, files)}
    (Path(out) / "key.json").write_text(json.dumps(key, indent=1))


def _code_cell(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "outputs": [], "source": source,
            "execution_count": None}  # fmt: skip


def render_lesson(path: Path, out: Path, timeout: int = 600) -> dict:
    """Run ``path``'s code cells up to its last panel in a fresh kernel and render every
    panel it displays into ``out/<cell id>-<k>/``; return ``{panel: {frames, bytes}}``.

    ``out`` is replaced only when every panel rendered (written next to it, then moved).
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = lesson_panel_cells(notebook)
    out = Path(out).resolve()  # the kernel runs in the notebook's folder
    if not cells:
        return {}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        setup = (
            "from clipping_lib.lab import site_frames as _site_frames\n"
            "_site_frames.record_displayed_panels()"
        )
        run = [_code_cell(setup)]
        panel_cells = {index: (cell_id, count) for index, cell_id, count in cells}
        for index, cell in enumerate(notebook["cells"][: cells[-1][0] + 1]):
            if cell["cell_type"] != "code":
                continue
            run.append(_code_cell("".join(cell["source"])))
            if index in panel_cells:
                cell_id, count = panel_cells[index]
                run.append(_code_cell(
                    f"_site_frames.render_displayed({str(partial)!r}, {cell_id!r}, {count})"
                ))  # fmt: skip
        run.append(_code_cell(
            f"_site_frames.write_key({str(partial)!r}, {str(Path(path).resolve())!r})"
        ))  # fmt: skip
        trimmed = nbformat.from_dict({**notebook, "cells": run})
        NotebookClient(
            trimmed,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(path).resolve().parent)}},
            record_timing=False,
        ).execute()
        summary = json.loads((partial / "summary.json").read_text())
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        return summary
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def is_current(path: Path, out: Path) -> bool:
    """True if ``out`` holds the frames of the lesson at ``path`` as it is now."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    if not lesson_panel_cells(notebook):
        return True
    try:
        stored = json.loads((Path(out) / "key.json").read_text())
    except (OSError, ValueError):
        return False
    return stored["key"] == lesson_key(notebook, stored["files"])


def _measure(folder: Path) -> str:
    """PNG against lossless WebP for the pictures of one rendered panel folder."""
    png = webp = 0
    for picture in sorted(folder.glob("*.webp")):
        rgba = np.asarray(Image.open(picture).convert("RGBA"))
        png += len(_encode(rgba, "png"))
        webp += picture.stat().st_size
    return f"{folder.name}: PNG {png / 1e3:.0f} kB, WebP {webp / 1e3:.0f} kB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path, help="folder for this lesson's panels")
    parser.add_argument("--measure", action="store_true", help="compare PNG and WebP sizes")
    args = parser.parse_args(argv)
    summary = render_lesson(args.notebook, args.out)
    for name, numbers in summary.items():
        line = f"{args.notebook.stem} {name}: {numbers['frames']} frames, {numbers['bytes']} bytes"
        print(line, flush=True)
        if args.measure:
            print("   ", _measure(args.out / name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
