"""The timing helper and the slider panel machinery."""

from __future__ import annotations

import base64

import ipywidgets as widgets
import pytest

from clipping_lib.lab.plots import figure_to_png, new_figure
from clipping_lib.lab.timing import compare, medians
from clipping_lib.lab.widgets import SliderPanel


def test_compare_interleaves_and_uses_fresh_inputs():
    calls = []
    seconds = compare(
        {"a": lambda x: calls.append(("a", x)), "b": lambda x: calls.append(("b", x))},
        setup=lambda: len(calls),
        rounds=3,
        warmup=1,
    )
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3}
    assert [name for name, _ in calls] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [x for _, x in calls] == list(range(8))  # setup ran before every call
    assert set(medians(seconds)) == {"a", "b"}


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"rounds": 0}, "rounds"), ({"warmup": -1}, "warmup")]
)
def test_compare_rejects_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare({"a": lambda x: x}, setup=lambda: 0, **kwargs)


def _line_panel():
    figure = new_figure(3, 2)
    ax = figure.add_subplot()
    (line,) = ax.plot([0, 1], [0, 0])
    ax.set_ylim(-2, 2)

    def draw(height: float) -> None:
        line.set_ydata([0, height])

    slider = widgets.FloatSlider(value=0.0, min=-1.0, max=1.0)
    return SliderPanel(figure, {"height": slider}, draw), line


def test_moving_a_slider_redraws_the_image():
    panel, line = _line_panel()
    first = panel.image.value
    assert bytes(first).startswith(b"\x89PNG")
    panel.controls["height"].value = 1.0
    assert list(line.get_ydata()) == [0, 1.0]
    assert panel.image.value != first
    assert panel.values == {"height": 1.0}
    assert len(panel.update_seconds) == 2  # built once, moved once


def test_static_png_travels_with_the_widget():
    panel, _ = _line_panel()
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == bytes(panel.image.value)


def test_figure_to_png_renders_at_the_figure_dpi():
    figure = new_figure(2, 1, dpi=50)
    png = figure_to_png(figure)
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    assert (width, height) == (100, 50)
