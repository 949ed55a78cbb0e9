"""clipping_lib.lab.site_frames on small panels, with no kernel and no site build."""

from __future__ import annotations

import io
import json

import ipywidgets as widgets
import numpy as np
import pytest
from PIL import Image

from clipping_lib.lab import site_frames
from clipping_lib.lab.plots import freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel


def _panel(freeze: bool = True) -> SliderPanel:
    figure = new_figure(2.0, 2.0)
    ax = figure.add_subplot()
    ax.set(xlim=(0, 10), ylim=(0, 10))
    (point,) = ax.plot([], [], "o", color="red")
    figure.tight_layout()
    if freeze:
        freeze_static_artists(figure, [point])
    readout = widgets.HTML()

    def draw(x: float, y: int, mode: str, show: bool) -> None:
        point.set_data([x], [y])
        point.set_visible(show)
        readout.value = f"<b>{mode}</b> at ({x:.2f}, {y})"

    controls = {
        "x": widgets.FloatSlider(value=2.5, min=0.0, max=10.0, step=0.5, description="x"),
        "y": widgets.IntSlider(value=3, min=0, max=10, description="y"),
        "mode": widgets.ToggleButtons(options=["a", "b", "c"], value="b", description="mode"),
        "show": widgets.Checkbox(value=True, description="show"),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


def test_sweep_values_include_the_default_and_snap_to_the_step():
    values, default = site_frames.sweep_values(
        widgets.FloatSlider(value=2.5, min=0.0, max=10.0, step=0.5)
    )
    assert values[default] == 2.5 and values[0] == 0.0 and values[-1] == 10.0
    assert all(abs(v / 0.5 - round(v / 0.5)) < 1e-9 for v in values)
    assert len(values) <= site_frames.SLIDER_VALUES
    log_values, log_default = site_frames.sweep_values(
        widgets.FloatLogSlider(value=0.5, base=10, min=-2, max=1, step=0.1)
    )
    assert log_values[log_default] == 0.5 and log_values[0] == pytest.approx(0.01)
    ints, _ = site_frames.sweep_values(widgets.IntSlider(value=3, min=0, max=100))
    assert all(isinstance(v, int) for v in ints)
    options, index = site_frames.sweep_values(widgets.Dropdown(options=list("pqrs"), value="r"))
    assert options == [0, 1, 2, 3] and index == 2


def test_panel_states_are_default_single_moves_and_the_grid():
    states = site_frames.panel_states([3, 2, 2], [1, 0, 1])
    assert states[0] == (1, 0, 1)
    assert len(states) == len(set(states))
    assert {(i, j, 1) for i in range(3) for j in range(2)} <= set(states)
    assert (1, 0, 0) in states and (0, 0, 0) not in states  # grid x third control: not drawn


@pytest.mark.parametrize("freeze", [True, False], ids=["overlay", "whole"])
def test_render_panel_writes_a_frame_per_state(tmp_path, freeze):
    panel = _panel(freeze)
    stored = np.asarray(Image.open(io.BytesIO(panel.image.value)).convert("RGBA"))
    manifest = site_frames.render_panel(panel, tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["frames"] == manifest["frames"]
    assert [c["kind"] for c in on_disk["controls"]] == ["range", "range", "options", "checkbox"]
    assert on_disk["controls"][2]["labels"] == ["a", "b", "c"]
    assert on_disk["grid"] == ["x", "y"]
    assert (on_disk["background"] is not None) == freeze
    assert panel.values == {"x": 2.5, "y": 3, "mode": "b", "show": True}, "defaults restored"
    key = ".".join(str(c["default"]) for c in on_disk["controls"])
    assert on_disk["frames"][key]["readout"] == "<b>b</b> at (2.50, 3)"
    frame = Image.open(tmp_path / on_disk["frames"][key]["image"]).convert("RGBA")
    if freeze:
        background = Image.open(tmp_path / on_disk["background"]).convert("RGBA")
        assert np.asarray(frame)[..., 3].mean() < 20, "an overlay is mostly transparent"
        frame = Image.alpha_composite(background, frame)
    difference = np.abs(np.asarray(frame, dtype=int) - stored.astype(int))[..., :3]
    assert difference.max() <= 4
    hidden = on_disk["frames"][key[:-1] + "0"]["image"]
    assert hidden != on_disk["frames"][key]["image"]


def test_render_displayed_checks_the_count(tmp_path):
    site_frames.record_displayed_panels()
    panel = _panel()
    panel._repr_mimebundle_()
    with pytest.raises(RuntimeError, match="displayed 1 panels; the notebook stores 2"):
        site_frames.render_displayed(str(tmp_path), "cell", 2)
    panel._repr_mimebundle_()
    site_frames.render_displayed(str(tmp_path), "cell", 1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cell-0"]["frames"] > 10 and (tmp_path / "cell-0" / "manifest.json").is_file()
