"""The live panels of the built website, checked as files (no browser): every panel on
every lesson page has a manifest whose frames cover its controls, within the size
budgets, and its default frame is the figure stored in the notebook.

The same panels are moved in Chromium in test_live_panels_in_chromium.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipping_lib.lab import site_frames

from .conftest import PANEL_SIZES, README, lessons

PANEL_MIME = "application/vnd.jupyter.widget-view+json"
PANEL_BUDGET = site_frames.PANEL_BUDGET  # bytes of frames (manifest, background, pictures)
SITE_BUDGET = 40 * 2**20  # bytes of the whole site
# The default frame, composed as the page composes it (background, then the overlay),
# against the notebook's stored PNG: every channel of every pixel within PIXEL_TOLERANCE
# levels (of 255), and at most RARE_SHARE of the pixels more than 2 levels off. They differ
# only by the rounding of alpha blending, largest where two antialiased moving artists
# overlap (measured: at most 6 levels, on fewer than 0.01% of the pixels).
PIXEL_TOLERANCE = 8
RARE_SHARE = 0.001
MARKER = re.compile(r'<div class="live-panel" data-manifest="([^"]+)" data-image="(\d+)">')


def markers(built_site, stem: str) -> list[tuple[Path, int]]:
    """(manifest path, picture index in its cell) for each panel marker on a lesson page."""
    page = built_site.root / "notebooks" / f"{stem}.html"
    found = MARKER.findall(page.read_text(encoding="utf-8"))
    return [(page.parent / relative, int(image)) for relative, image in found]


def stored_panel_png(notebook: dict, cell_id: str, k: int) -> Image.Image:
    """The k-th panel picture stored in the cell ``cell_id``."""
    cell = next(c for c in notebook["cells"] if c.get("id") == cell_id)
    panels = [o for o in cell["outputs"] if PANEL_MIME in o.get("data", {})]
    return Image.open(io.BytesIO(base64.b64decode(panels[k]["data"]["image/png"])))


def default_key(manifest: dict) -> str:
    return ".".join(str(c["default"]) for c in manifest["controls"])


def expected_keys(manifest: dict) -> set[str]:
    """Every state the page lets a reader reach: one control moved, or the grid pair."""
    defaults = [c["default"] for c in manifest["controls"]]
    counts = [len(c["labels"]) for c in manifest["controls"]]
    keys = set()
    for position, count in enumerate(counts):
        for index in range(count):
            state = list(defaults)
            state[position] = index
            keys.add(".".join(map(str, state)))
    if manifest["grid"]:
        names = [c["name"] for c in manifest["controls"]]
        a, b = (names.index(n) for n in manifest["grid"])
        for i in range(counts[a]):
            for j in range(counts[b]):
                state = list(defaults)
                state[a], state[b] = i, j
                keys.add(".".join(map(str, state)))
    return keys


@pytest.mark.parametrize("notebook", lessons(), ids=lambda p: p.stem)
def test_every_panel_has_frames_for_every_control(built_site, notebook):
    """One marker per stored panel; its manifest has a frame, picture and readout for each
    value of each control and for the grid pair, and the files are there."""
    as_built = built_site.notebook_as_built(notebook.stem)
    stored = sum(
        PANEL_MIME in o.get("data", {})
        for c in as_built["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
    )  # fmt: skip
    found = markers(built_site, notebook.stem)
    assert len(found) == stored, f"{stored} panels stored, {len(found)} live markers"
    for manifest_path, _ in found:
        assert manifest_path.is_file(), f"no manifest {manifest_path}"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        folder = manifest_path.parent
        assert manifest["controls"], f"{folder.name}: no controls"
        for control in manifest["controls"]:
            assert control["label"] and control["kind"] in {"range", "options", "checkbox"}
            assert len(control["labels"]) >= 2, f"{folder.name}: {control['name']} never moves"
        missing = expected_keys(manifest) - set(manifest["frames"])
        assert not missing, f"{folder.name}: no frame for {sorted(missing)[:5]}"
        files = {f["image"] for f in manifest["frames"].values()}
        if manifest["background"]:
            files.add(manifest["background"])
        assert all((folder / name).is_file() for name in files)
        assert all(isinstance(f["readout"], str) for f in manifest["frames"].values())
        size = sum(p.stat().st_size for p in folder.iterdir())
        PANEL_SIZES[f"{notebook.stem}/{folder.name}"] = {
            "frames": len(manifest["frames"]), "pictures": len(files), "bytes": size,
        }  # fmt: skip


def test_size_budgets(built_site):
    """At most 1 MiB of frames per panel, at most 40 MiB for the whole site."""
    panels = [p for p in (built_site.root / "_panels").glob("*/*") if p.is_dir()]
    assert panels, "no panel frames in the site"
    over = {
        p.relative_to(built_site.root).as_posix(): size
        for p in panels
        if (size := sum(f.stat().st_size for f in p.iterdir())) > PANEL_BUDGET
    }
    assert not over, f"panels over {PANEL_BUDGET} bytes: {over}"
    total = sum(p.stat().st_size for p in built_site.root.rglob("*") if p.is_file())
    assert total <= SITE_BUDGET, f"the site is {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("notebook", lessons(), ids=lambda p: p.stem)
def test_default_frame_is_the_stored_figure(built_site, notebook):
    """Background and default overlay, composed, are the notebook's stored panel picture
    within PIXEL_TOLERANCE levels per channel, pixel by pixel."""
    as_built = built_site.notebook_as_built(notebook.stem)
    for manifest_path, _ in markers(built_site, notebook.stem):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        folder = manifest_path.parent
        cell_id, k = folder.name.rsplit("-", 1)
        stored = stored_panel_png(as_built, cell_id, int(k)).convert("RGBA")
        frame = Image.open(folder / manifest["frames"][default_key(manifest)]["image"])
        frame = frame.convert("RGBA")
        if manifest["background"]:
            background = Image.open(folder / manifest["background"]).convert("RGBA")
            frame = Image.alpha_composite(background, frame)
        assert frame.size == stored.size, f"{folder.name}: {frame.size} vs {stored.size}"
        difference = np.abs(
            np.asarray(frame, dtype=int)[..., :3] - np.asarray(stored, dtype=int)[..., :3]
        )
        share = (difference.max(-1) > 2).mean()
        assert difference.max() <= PIXEL_TOLERANCE and share <= RARE_SHARE, (
            f"{notebook.stem} {folder.name}: the default frame differs from the stored figure "
            f"by up to {difference.max()} levels ({share:.3%} of pixels by more than 2)"
        )


def _readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Two commands") : text.index("Install and run the tests")]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)]


def test_panel_note_gives_the_readmes_commands(built_site):
    """The note after a panel installs and opens the course as the README does: the virtual
    environment, the CPU torch line, requirements and JupyterLab, and --allow-root."""
    commands = _readme_commands()
    assert any("venv" in c for c in commands) and any("torch==" in c for c in commands)
    pages = [
        built_site.root / "notebooks" / f"{stem}.html" for stem in built_site.lessons_as_built()
    ]
    with_panels = [p for p in pages if 'class="live-panel"' in p.read_text(encoding="utf-8")]
    assert with_panels
    for page in with_panels:
        text = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
        text = text.replace("&amp;", "&").replace("&quot;", '"')
        for command in commands:
            assert command in text, f"{page.name}: the note lacks {command!r}"
        assert "--allow-root" in text


def test_landing_page_lists_every_lesson(built_site):
    """The landing page links every lesson under its title, new lessons included."""
    index = (built_site.root / "index.html").read_text(encoding="utf-8")
    main = index[index.index("<main") :]
    for stem in built_site.lessons_as_built():
        title = next(
            line[2:].strip()
            for c in built_site.notebook_as_built(stem)["cells"]
            if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines()
            if line.startswith("# ")
        )
        link = re.search(rf'href="notebooks/{stem}\.html"[^>]*>(.*?)</a>', main, re.S)
        assert link, f"the landing page does not link {stem}"
        text = re.sub(r"<[^>]+>", "", link.group(1)).replace("&amp;", "&")
        assert text.split()[0] == title.split()[0], f"{stem}: {text!r} vs {title!r}"


def test_search_index_has_the_parts_of_snake_case_names(built_site):
    """The search index maps "unscale" (stemmed) to the pages holding ``unscale_``, and
    "grad" to those holding ``clip_grad_norm_``, as well as the whole names."""
    text = (built_site.root / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    docnames = index["docnames"]

    def pages(term: str) -> set[str]:
        found = set()
        for table in (index["terms"], index["titleterms"]):  # words of the text, of titles
            hits = table.get(term, [])
            found |= {docnames[i] for i in ([hits] if isinstance(hits, int) else hits)}
        return found

    assert "notebooks/09_modern_training" in pages("unscal")
    assert "_api/clipping_lib.recipes" in pages("unscal")
    assert pages("grad") >= pages("clip_grad_norm_") != set()
