"""The live panels in a real browser: Debian's Chromium, the site served on 127.0.0.1.

On every lesson page, every panel's controls appear under its figure with a label; each
control, moved from the keyboard through all its values, shows the manifest's frame and
readout for that setting; the grid pair moves together and a third control returns them
to their defaults; the default frame, composed by the browser, is the figure stored in
the notebook; no request leaves 127.0.0.1. A before/after pair of one panel moved goes to
tests/browser/artifacts/ (copied by hand to docs/images/ for the README).
"""

from __future__ import annotations

import json

import pytest

from .conftest import lessons
from .test_live_panels import PIXEL_TOLERANCE, RARE_SHARE, default_key
from .test_site_in_chromium import Visitor

pytestmark = pytest.mark.browser

SCREENSHOT_PANEL = ("06_the_cliff", 1, "threshold")  # lesson, panel on the page, control

WAIT_FOR_PANELS = """async () => {
    const markers = Array.from(document.querySelectorAll('.live-panel[data-manifest]'));
    for (let i = 0; i < 400; i++) {
        if (markers.every((m) => m.dataset.live)) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return markers.map((m) => ({
        live: m.dataset.live || 'never', manifest: m.dataset.manifest,
        ui: m.dataset.ui, figure: m.dataset.figure,
    }));
}"""

PANEL_STATE = """([ui, figure]) => {
    const panel = document.getElementById(ui);
    const overlay = document.getElementById(figure).querySelector('.live-overlay')
        || document.getElementById(figure).querySelector('img');
    const template = document.createElement('template');
    return {
        key: panel.dataset.state,
        image: overlay.getAttribute('src').split('/').pop(),
        readout: panel.querySelector('.live-readout').innerHTML,
        decoded: overlay.complete && overlay.naturalWidth > 0,
    };
}"""

SAME_HTML = """(html) => { const t = document.createElement('template');
    t.innerHTML = html; return t.innerHTML; }"""

# Compose background and default overlay in a canvas, as the page stacks them, and compare
# with the stored picture (the <img> src before the script swapped it): max channel diff.
COMPARE_DEFAULT = """async ([figure, background, frame]) => {
    const box = document.getElementById(figure);
    const load = (src) => new Promise((ok, fail) => {
        const image = new Image(); image.onload = () => ok(image); image.onerror = fail;
        image.src = src; });
    const stored = await load(box.dataset.stored);
    const layers = [];
    if (background) layers.push(await load(background));
    layers.push(await load(frame));
    const pixels = (images) => {
        const canvas = document.createElement('canvas');
        canvas.width = stored.naturalWidth; canvas.height = stored.naturalHeight;
        const context = canvas.getContext('2d');
        images.forEach((image) => context.drawImage(image, 0, 0));
        return context.getImageData(0, 0, canvas.width, canvas.height).data;
    };
    const a = pixels([stored]), b = pixels(layers);
    let worst = 0, off = 0;
    for (let i = 0; i < a.length; i += 4) {
        let pixel = 0;
        for (let c = 0; c < 3; c++) pixel = Math.max(pixel, Math.abs(a[i + c] - b[i + c]));
        worst = Math.max(worst, pixel);
        off += pixel > 2;
    }
    return {worst, share: off / (a.length / 4), size: [stored.naturalWidth, stored.naturalHeight],
            composed: [layers[0].naturalWidth, layers[0].naturalHeight]};
}"""


def _manifest(site_url: str, page, relative: str) -> tuple[dict, str]:
    url = page.evaluate("(r) => new URL(r, document.baseURI).href", relative)
    return json.loads(page.evaluate("(u) => fetch(u).then((r) => r.text())", url)), url


def _expect(visitor, info: dict, manifest: dict, state: list[int]) -> None:
    key = ".".join(map(str, state))
    frame = manifest["frames"][key]
    shown = visitor.page.evaluate(PANEL_STATE, [info["ui"], info["figure"]])
    assert shown["key"] == key, f"{info['manifest']}: state {shown['key']}, expected {key}"
    assert shown["image"] == frame["image"], f"{info['manifest']} {key}: wrong picture"
    assert shown["readout"] == visitor.page.evaluate(SAME_HTML, frame["readout"])


def _move(visitor, info: dict, spec: dict, index: int) -> None:
    """Set one control to ``index`` from the keyboard, as a reader would."""
    ui = visitor.page.locator(f"#{info['ui']}")
    if spec["kind"] == "range":
        control = ui.get_by_role("slider", name=spec["label"], exact=True)
        control.focus()
        control.press("Home")
        for _ in range(index):
            control.press("ArrowRight")
    elif spec["kind"] == "options":
        group = ui.get_by_role("group", name=spec["label"], exact=True)
        radio = group.get_by_role("radio").nth(index)
        radio.focus()
        radio.press("Space")
    else:
        box = ui.get_by_role("checkbox", name=spec["label"], exact=True)
        if box.is_checked() != bool(index):
            box.focus()
            box.press("Space")


def _check_panel(visitor, site_url, info: dict) -> int:
    """Every value of every control, then the grid pair and a third control; moves made."""
    manifest, url = _manifest(site_url, visitor.page, info["manifest"])
    controls = manifest["controls"]
    defaults = [c["default"] for c in controls]
    visitor.page.locator(f"#{info['figure']}").scroll_into_view_if_needed()
    _expect(visitor, info, manifest, defaults)
    moves = 0
    for position, spec in enumerate(controls):
        for index in [*range(len(spec["labels"])), spec["default"]]:
            _move(visitor, info, spec, index)
            state = list(defaults)
            state[position] = index
            _expect(visitor, info, manifest, state)
            moves += 1
    if manifest["grid"]:
        names = [c["name"] for c in controls]
        a, b = (names.index(n) for n in manifest["grid"])
        state = list(defaults)
        state[a], state[b] = 0, len(controls[b]["labels"]) - 1
        _move(visitor, info, controls[a], 0)
        _move(visitor, info, controls[b], state[b])
        _expect(visitor, info, manifest, state)
        others = [i for i in range(len(controls)) if i not in (a, b)]
        if others:  # a third control: the grid pair returns to its defaults
            c = others[0]
            index = (defaults[c] + 1) % len(controls[c]["labels"])
            _move(visitor, info, controls[c], index)
            state = list(defaults)
            state[c] = index
            _expect(visitor, info, manifest, state)
            _move(visitor, info, controls[c], defaults[c])
        else:
            _move(visitor, info, controls[a], defaults[a])
            _move(visitor, info, controls[b], defaults[b])
        moves += 3
    _expect(visitor, info, manifest, defaults)
    base = url.rsplit("/", 1)[0]
    background = f"{base}/{manifest['background']}" if manifest["background"] else None
    default_frame = f"{base}/{manifest['frames'][default_key(manifest)]['image']}"
    compared = visitor.page.evaluate(COMPARE_DEFAULT, [info["figure"], background, default_frame])
    assert compared["size"] == compared["composed"], compared
    assert compared["worst"] <= PIXEL_TOLERANCE and compared["share"] <= RARE_SHARE, (
        f"{info['manifest']}: the default frame differs from the stored figure by up to "
        f"{compared['worst']} levels in Chromium ({compared['share']:.3%} of pixels by more than 2)"
    )
    return moves


@pytest.fixture
def visitor(browser):
    visitor = Visitor(browser)
    yield visitor
    visitor.close()


@pytest.mark.parametrize("notebook", lessons(), ids=lambda p: p.stem)
def test_every_panel_moves_with_no_kernel(site_url, visitor, notebook):
    visitor.visit(f"{site_url}/notebooks/{notebook.stem}.html")
    panels = visitor.page.evaluate(WAIT_FOR_PANELS)
    assert all(p["live"] == "ready" for p in panels), panels
    for info in panels:
        assert _check_panel(visitor, site_url, info) > 0
    assert visitor.problems == [], visitor.problems


def test_panel_before_and_after_a_move(site_url, visitor, artifacts):
    """Screenshots of one panel at its default and with a control moved three steps."""
    lesson, number, control = SCREENSHOT_PANEL
    visitor.page.set_viewport_size({"width": 1100, "height": 900})
    visitor.visit(f"{site_url}/notebooks/{lesson}.html")
    info = visitor.page.evaluate(WAIT_FOR_PANELS)[number]
    figure = visitor.page.locator(f"#{info['figure']}")
    ui = visitor.page.locator(f"#{info['ui']}")
    figure.scroll_into_view_if_needed()
    visitor.page.evaluate(
        "(id) => { document.getElementById(id).scrollIntoView({block: 'center'}); }",
        info["figure"],
    )

    def shot(path):
        box_a, box_b = figure.bounding_box(), ui.bounding_box()
        top = min(box_a["y"], box_b["y"]) - 8
        bottom = max(box_a["y"] + box_a["height"], box_b["y"] + box_b["height"]) + 8
        left = min(box_a["x"], box_b["x"]) - 8
        right = max(box_a["x"] + box_a["width"], box_b["x"] + box_b["width"]) + 8
        clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
        return visitor.page.screenshot(path=path, clip=clip)

    before = shot(artifacts / "site_panel_before.png")
    manifest, _ = _manifest(site_url, visitor.page, info["manifest"])
    spec = next(c for c in manifest["controls"] if c["name"] == control)
    target = max(0, spec["default"] - 3) if spec["default"] >= 3 else spec["default"] + 3
    _move(visitor, info, spec, target)
    visitor.page.wait_for_function(
        "(id) => { const o = document.getElementById(id).querySelector('.live-overlay');"
        " return o.complete && o.naturalWidth > 0; }",
        arg=info["figure"],
    )
    after = shot(artifacts / "site_panel_after.png")
    assert before != after and len(before) > 10_000
    assert visitor.problems == []
