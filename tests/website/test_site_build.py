"""The built website, checked as files (no browser): warnings, pages, links, figures, math.

The browser checks (console errors, math typeset, search) are in test_site_in_chromium.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import SITE_SOURCE, lessons

PANEL_MIME = "application/vnd.jupyter.widget-view+json"
EXTERNAL_SCHEMES = ("http", "https", "mailto", "javascript", "data", "tel")


def _load_conf():
    spec = importlib.util.spec_from_file_location("site_conf", SITE_SOURCE / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _PageParser(HTMLParser):
    """Collects a page's ids, its links and resources, and the text of its lesson cells."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.output_images: list[str] = []  # src of each <img> in a cell output
        self.scripts: list[str] = []
        self._in_output = 0  # depth inside a cell's output area
        self._stack: list[tuple[str, bool]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for name in ("href", "src"):
            if attrs.get(name) is not None:
                self.refs.append((tag, attrs[name]))
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag == "img" and self._in_output:
            self.output_images.append(attrs.get("src", ""))
        void = tag in {"img", "link", "meta", "br", "hr", "input", "source", "col", "wbr"}
        if not void:
            opens_output = tag == "div" and "cell_output" in classes
            self._stack.append((tag, opens_output))
            self._in_output += opens_output

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, opened_output = self._stack.pop()
            self._in_output -= opened_output
            if open_tag == tag:
                break


def _parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _page_of(built_site, notebook: Path) -> Path:
    return built_site.root / "notebooks" / f"{notebook.stem}.html"


def _png_outputs(notebook: dict) -> tuple[int, int]:
    """(figures, slider panels) among the notebook's stored outputs."""
    cells = notebook["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    panels = sum(PANEL_MIME in o.get("data", {}) for o in outputs)
    return figures, panels


def test_build_has_no_warnings(built_site):
    """Sphinx warnings are errors: a broken reference, a bad docstring or an unreadable cell."""
    assert built_site.warnings.strip() == "", f"Sphinx warned:\n{built_site.warnings}"


def test_every_lesson_has_a_page_in_course_order(built_site):
    assert lessons(), "no notebooks/NN_*.ipynb found"
    for notebook in lessons():
        assert _page_of(built_site, notebook).is_file(), f"no page for {notebook.name}"
    index = (built_site.root / "index.html").read_text(encoding="utf-8")
    sidebar = index[index.index('class="bd-sidebar-primary') :]
    linked = re.findall(r'href="notebooks/(\d\d_\w+)\.html"', sidebar)
    in_order = list(dict.fromkeys(linked))
    assert in_order == [n.stem for n in lessons()], "the table of contents is not the course order"


def test_landing_page_is_the_course_map(built_site):
    """The course map (from the README) links each lesson it lists to the lesson's page."""
    index = built_site.root / "index.html"
    text = index.read_text(encoding="utf-8")
    assert 'id="course-map"' in text
    table = text[text.index('id="course-map"') :]
    table = table[: table.index("</table>")]
    targets = re.findall(r'href="([^"#]+)"', table)
    assert len(targets) >= 2, "the course map links no lesson"
    for target in targets:
        assert re.fullmatch(r"notebooks/\d\d_\w+\.html", target), target
        assert (built_site.root / target).is_file(), f"the course map links {target}, not built"


def test_every_local_link_and_resource_resolves(built_site):
    """Each local href/src points at a file of the site (and at an id on it, for #anchors);
    scripts, styles and images all come from the site itself, none from a CDN."""
    pages = built_site.pages()
    parsed = {page: _parse(page) for page in pages}
    broken, external_resources = [], []
    for page, parser in parsed.items():
        for tag, url in parser.refs:
            parts = urlsplit(url)
            if parts.scheme in EXTERNAL_SCHEMES or url.startswith("//"):
                if tag != "a":
                    external_resources.append(f"{page.name}: <{tag}> {url}")
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or built_site.root.resolve() not in target.resolve().parents:
                broken.append(f"{page.relative_to(built_site.root)}: <{tag}> {url}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(built_site.root)}: <{tag}> {url} (no id)")
    assert not external_resources, "resources loaded from outside the site:\n" + "\n".join(
        external_resources
    )
    assert not broken, f"{len(broken)} broken local links:\n" + "\n".join(broken[:40])


@pytest.mark.parametrize("notebook", lessons(), ids=lambda p: p.stem)
def test_lesson_page_shows_every_figure_and_how_to_run_panels_live(built_site, notebook):
    """Every stored figure is on the page; after each panel come a marker for the site's
    script and a note on running it in a notebook; the solution cells (hidden in
    JupyterLab) are collapsed."""
    as_built = built_site.notebook_as_built(notebook.stem)
    figures, panels = _png_outputs(as_built)
    hidden = sum("hide-input" in c["metadata"].get("tags", []) for c in as_built["cells"])
    source_hidden = sum(
        c["metadata"].get("jupyter", {}).get("source_hidden", False) for c in as_built["cells"]
    )
    page = _page_of(built_site, notebook)
    parser = _parse(page)
    assert len(parser.output_images) == figures, (
        f"{notebook.name}: {figures} stored figures, {len(parser.output_images)} on the page"
    )
    text = page.read_text(encoding="utf-8")
    assert text.count("Run this panel in a notebook") == panels
    assert text.count('class="live-panel"') == panels
    assert text.count('class="cell tag_hide-input') == hidden == source_hidden
    assert "jupyter-widgets" not in text and PANEL_MIME not in text, "a live widget view leaked"
    for url in parser.output_images:
        data = (page.parent / unquote(urlsplit(url).path)).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{url} is not a PNG"


def test_math_is_served_by_the_site(built_site):
    """Pages with math load MathJax from _static/mathjax, whose fonts ship alongside."""
    mathjax = built_site.root / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    with_math = [p for p in built_site.pages() if 'class="math' in p.read_text(encoding="utf-8")]
    assert len(with_math) >= len(lessons()) // 2, "few pages have math: is dollarmath on?"
    for page in with_math:
        scripts = _parse(page).scripts
        assert any(s.split("?")[0].endswith("_static/mathjax/tex-chtml.js") for s in scripts), (
            f"{page.name} has math but does not load the site's MathJax: {scripts}"
        )


def _public_modules() -> list[str]:
    import clipping_lib

    found = []
    for info in pkgutil.walk_packages(clipping_lib.__path__, "clipping_lib."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def test_api_reference_documents_every_public_module(built_site):
    """One page per public module of clipping_lib (found by import, while the site finds
    them on disk), with each function and class in its __all__."""
    missing = []
    for name in _public_modules():
        page = built_site.root / "_api" / f"{name}.html"
        if not page.is_file():
            missing.append(f"{name}: no page")
            continue
        ids = _parse(page).ids
        if f"module-{name}" not in ids:
            missing.append(f"{name}: no module docstring")
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", []):
            is_code = inspect.isfunction(obj := getattr(module, member)) or inspect.isclass(obj)
            if is_code and f"{name}.{member}" not in ids:
                missing.append(f"{name}.{member}")
    assert not missing, "not in the API reference:\n" + "\n".join(missing)


def test_web_version_changes_only_presentation():
    """The staged notebook keeps every cell and output; it adds one note after each panel,
    collapses hidden (solution) cells and drops the widget state."""
    conf = _load_conf()
    panel_output = {"output_type": "display_data", "data": {PANEL_MIME: {}, "image/png": "x"}}
    notebook = {
        "metadata": {"widgets": {"state": {}}, "kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
        "cells": [
            {"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# T"},
            {"cell_type": "code", "id": "b", "metadata": {}, "source": "p",
             "outputs": [panel_output], "execution_count": 1},
            {"cell_type": "code", "id": "c", "metadata": {"jupyter": {"source_hidden": True}},
             "source": "s", "outputs": [], "execution_count": 2},
        ],
    }  # fmt: skip
    web = conf.web_version(notebook, "06_x.ipynb")
    assert [c["id"] for c in web["cells"]] == ["a", "b", "b-live", "c"]
    assert web["cells"][1] == notebook["cells"][1]
    note = web["cells"][2]["source"]
    assert "Run this panel in a notebook" in note
    assert "notebooks/06_x.ipynb" in note
    assert 'data-manifest="../_panels/06_x/b-0/manifest.json" data-image="0"' in note
    assert web["cells"][3]["metadata"]["tags"] == ["hide-input"]
    assert "tags" not in notebook["cells"][2]["metadata"], "the input notebook was modified"
    assert "widgets" not in web["metadata"] and "kernelspec" in web["metadata"]
