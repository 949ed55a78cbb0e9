"""Every slider panel works for a learner in a real JupyterLab: moved, redrawn, timed.

For each notebook that shows a panel: open it, clear it, run all cells, wait for the
panels to render, move a slider with the keyboard as a person would, and check that
the picture changed and no cell failed. Screenshots of each panel before and after
go to tests/browser/artifacts/, and the time from key press to new picture is kept
for the summary at the end of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .conftest import LATENCIES, NOTEBOOKS

pytestmark = pytest.mark.browser

PANEL_MIME = "application/vnd.jupyter.widget-view+json"
MOVES = 9  # odd: alternating moves end one step away from where they began
RUN_ALL_TIMEOUT_MS = 300_000


def notebooks_with_panels() -> list[Path]:
    """Notebooks whose stored outputs hold a slider panel (a widget with a static PNG)."""
    found = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
        if any(PANEL_MIME in o.get("data", {}) and "image/png" in o.get("data", {})
               for o in outputs):  # fmt: skip
            found.append(path)
    return found


RUN_ALL = """async () => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    await app.commands.execute('notebook:clear-all-cell-outputs');
    await app.commands.execute('notebook:run-all-cells');
    const errors = [];
    for (const cell of panel.content.widgets) {
        if (cell.model.type !== 'code') continue;
        for (const output of cell.model.outputs.toJSON()) {
            if (output.output_type === 'error') errors.push(output.ename + ': ' + output.evalue);
        }
    }
    return errors;
}"""

SHUT_DOWN_KERNEL = """async () => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (panel && panel.sessionContext) await panel.sessionContext.shutdown();
}"""

WATCH_IMAGE = """(panel) => {
    const image = panel.querySelector('img');
    window.__changes = 0;
    new MutationObserver(() => {
        if (window.__changes === 0) window.__first_change_at = performance.now();
        window.__changes += 1;
    })
        .observe(image, {attributes: true, attributeFilter: ['src']});
}"""


def _open(page, lab: dict, name: str) -> str:
    """Open ``name`` alone in a fresh workspace; return the DOM id of its notebook panel."""
    workspace = name.removesuffix(".ipynb")
    page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session",
        timeout=120_000,
    )
    return page.evaluate("window.jupyterapp.shell.currentWidget.id")


def _press_and_time(page, key: str, timeout_ms: float) -> float | None:
    """Press ``key``; the milliseconds until the panel's image changes, or None if it did not."""
    start = page.evaluate("window.__changes = 0; performance.now()")
    page.keyboard.press(key)
    try:
        page.wait_for_function("window.__changes > 0", timeout=timeout_ms)
    except PlaywrightTimeoutError:
        return None
    return page.evaluate("window.__first_change_at") - start


def _move_and_time(page, panel, moves: int) -> list[float]:
    """Move a slider of the panel with the arrow keys, as a person would, and return the
    milliseconds from each key press to the new image. A slider whose move leaves the
    picture as it is (a parameter of a method not selected) is passed over for the next."""
    panel.evaluate(WATCH_IMAGE)
    handles = panel.locator(".noUi-handle")
    for index in range(handles.count()):
        handle = handles.nth(index)
        handle.focus()
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        keys = ["ArrowLeft", "ArrowRight"] if at_max else ["ArrowRight", "ArrowLeft"]
        first = _press_and_time(page, keys[0], timeout_ms=10_000)
        if first is None:
            continue
        latencies = [first]
        for move in range(1, moves):
            latency = _press_and_time(page, keys[move % 2], timeout_ms=30_000)
            assert latency is not None, f"slider {index}: move {move} did not redraw"
            latencies.append(latency)
        return latencies
    raise AssertionError("no slider of this panel changed its picture")


@pytest.mark.parametrize("path", notebooks_with_panels(), ids=lambda p: p.name)
def test_sliders_redraw_in_jupyterlab(path, jupyter_lab, browser, artifacts):
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    try:
        notebook_id = _open(page, jupyter_lab, path.name)
        page.set_default_timeout(RUN_ALL_TIMEOUT_MS)
        errors = page.evaluate(RUN_ALL)
        assert errors == [], f"{path.name}: cells failed in JupyterLab: {errors}"
        panels = page.locator(f"#{notebook_id} .jp-OutputArea-output .widget-hbox:has(> img)")
        panels.first.wait_for(state="attached", timeout=60_000)
        assert panels.count() >= 1
        for index in range(panels.count()):
            panel = panels.nth(index)
            if panel.locator(".noUi-handle").count() == 0:
                continue  # a panel driven by dropdowns only; its sliders-free moves are unit-tested
            panel.scroll_into_view_if_needed()
            stem = f"{path.stem}_panel{index}"
            before = panel.locator("img").screenshot(path=artifacts / f"{stem}_before.png")
            latencies = _move_and_time(page, panel, MOVES)
            page.wait_for_timeout(200)
            after = panel.locator("img").screenshot(path=artifacts / f"{stem}_after.png")
            panel.screenshot(path=artifacts / f"{stem}.png")
            assert before != after, f"{stem}: the picture did not change"
            LATENCIES[stem] = latencies
        assert LATENCIES, "no panel with a slider was found"
    finally:
        page.evaluate(SHUT_DOWN_KERNEL)
        page.close()
