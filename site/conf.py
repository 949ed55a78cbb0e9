"""Sphinx configuration: the course as a static website, built from the executed notebooks.

Build:  python -m sphinx -b html site build/site
Serve:  python -m http.server -d build/site -b 127.0.0.1 8000   (then open http://127.0.0.1:8000)

Nothing is executed: each page shows the outputs stored in its notebook. Before Sphinx
reads its sources, ``stage_notebooks`` copies every ``notebooks/NN_*.ipynb`` into
``site/notebooks/`` (gitignored) and prepares it for reading on the web: each slider panel
shows its static figure with a note on how to run it live, and hidden solution cells
become collapsed cells. MathJax is served from the site itself (from the
``django-static-mathjax`` package), so a page renders its math with no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent
REPO = SITE.parent
NOTEBOOKS = REPO / "notebooks"
STAGED = SITE / "notebooks"
API_TABLES = SITE / "_api_modules.md"  # written by write_api_tables, included by api.md
LESSON_NAME = re.compile(r"^\d\d_\w+\.ipynb$")
PANEL_MIME = "application/vnd.jupyter.widget-view+json"
REPOSITORY_URL = "https://github.com/gradient-clipping-course/course"
BINDER_URL = "https://mybinder.org/v2/gh/gradient-clipping-course/course/HEAD"
COLAB_URL = "https://colab.research.google.com/github/gradient-clipping-course/course/blob/main"

sys.path.insert(0, str(REPO))  # autodoc imports clipping_lib from this checkout

project = "Gradient clipping, hands-on"
author = "the course authors"
copyright = "the course authors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "_templates", API_TABLES.name]

# MyST: $...$ and $$...$$ math in the notebooks' Markdown.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# MyST-NB: stored outputs only, and a panel's static PNG instead of its live widget view.
nb_execution_mode = "off"
nb_mime_priority_overrides = [("html", PANEL_MIME, None)]
nb_ipywidgets_js: dict = {}  # no widget manager script from a CDN
nb_merge_streams = True
nb_render_markdown_format = "myst"  # Markdown outputs (tables printed by code) with their math

# autodoc: the library's docstrings, math and all, in source order.
autosummary_generate = [API_TABLES.name]  # stubs for the modules in the reference tables
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# MathJax 3 from the site's own _static/mathjax (copied by copy_mathjax below).
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "Gradient clipping, hands-on"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_context = {"default_mode": "auto"}  # light or dark as the reader's system prefers
html_show_sourcelink = False
html_theme_options = {
    "repository_url": REPOSITORY_URL,
    "repository_branch": "main",
    "path_to_docs": "",  # a lesson's docname (notebooks/NN_x) is its path in the repository
    "use_repository_button": True,
    "use_download_button": True,
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "navbar_persistent": [],  # search lives in the sidebar; no second search bar on top
}

# The MathJax files a page needs: the TeX-to-CommonHTML bundle, its fonts, the TeX
# extensions it may autoload, and the menu and accessibility parts it loads on demand.
MATHJAX_PARTS = [
    "tex-chtml.js",
    "output/chtml/fonts/woff-v2",
    "input/tex/extensions",
    "ui",
    "a11y",
]


def lesson_paths() -> list[Path]:
    """Every notebooks/NN_*.ipynb, in course order."""
    return sorted(p for p in NOTEBOOKS.iterdir() if LESSON_NAME.match(p.name))


def _live_note(name: str, panel_cell_id: str) -> dict:
    text = (
        "```{admonition} Run this panel live\n"
        ":class: tip\n"
        "This is a slider panel: the site shows the figure it drew when the notebook was "
        "executed. To move its sliders, run the notebook "
        f"[on Binder]({BINDER_URL}?urlpath=lab/tree/notebooks/{name}), "
        f"[in Colab]({COLAB_URL}/notebooks/{name}) "
        "(install the library first: see the course's README), "
        "or locally: `pip install -r requirements.txt && jupyter lab notebooks/`.\n"
        "```"
    )
    return {"cell_type": "markdown", "id": f"{panel_cell_id}-live", "metadata": {}, "source": text}


def web_version(notebook: dict, name: str) -> dict:
    """The notebook as the site shows it; its cells and outputs are otherwise unchanged.

    After each cell whose output is a slider panel comes a note on running it live; a cell
    hidden in JupyterLab (a solution) is collapsed on the page; the widget state, which
    only a live kernel can use, is dropped.
    """
    cells = []
    for cell in notebook["cells"]:
        cell = dict(cell)
        jupyter = cell.get("metadata", {}).get("jupyter", {})
        tags = []
        if jupyter.get("source_hidden"):
            tags.append("hide-input")
        if jupyter.get("outputs_hidden"):
            tags.append("hide-output")
        if tags:
            metadata = dict(cell["metadata"])
            metadata["tags"] = [*metadata.get("tags", []), *tags]
            cell["metadata"] = metadata
        cells.append(cell)
        outputs = cell.get("outputs", []) if cell["cell_type"] == "code" else []
        if any(PANEL_MIME in output.get("data", {}) for output in outputs):
            cells.append(_live_note(name, cell.get("id", f"cell-{len(cells)}")))
    metadata = {k: v for k, v in notebook["metadata"].items() if k != "widgets"}
    return {**notebook, "metadata": metadata, "cells": cells}


def _write_if_changed(path: Path, text: str) -> None:
    """Write atomically, and only when the text changed (keeps Sphinx's cache warm)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def stage_notebooks(app, config) -> None:
    """Copy the lessons into the source directory as the site shows them; drop stale ones."""
    STAGED.mkdir(exist_ok=True)
    wanted = set()
    for path in lesson_paths():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        text = json.dumps(web_version(notebook, path.name), indent=1, ensure_ascii=False)
        _write_if_changed(STAGED / path.name, text + "\n")
        wanted.add(path.name)
    for stale in STAGED.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


def public_modules(package: str = "clipping_lib") -> list[str]:
    """A package's public modules and subpackages, one level down (found on disk)."""
    folder = REPO.joinpath(*package.split("."))
    names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    names += [p.parent.name for p in folder.glob("*/__init__.py")]
    return sorted(f"{package}.{n}" for n in names if not n.startswith("_"))


def _module_table(title: str, intro: str, names: list[str]) -> str:
    rows = "".join(f"   {name}\n" for name in names)
    directive = ".. autosummary::\n   :toctree: _api\n   :recursive:\n\n"
    return f"## {title}\n\n{intro}\n\n```{{eval-rst}}\n{directive}{rows}```\n"


def write_api_tables(app, config) -> None:
    """The reference page's two module tables, one per floor, from the folders on disk.

    The top level of ``clipping_lib`` is what a training loop imports; ``clipping_lib.lab``
    is the course's lab bench. A new module appears on the reference page by itself.
    """
    loop = [m for m in public_modules() if m != "clipping_lib.lab"]
    bench = public_modules("clipping_lib.lab")
    text = _module_table(
        "For your training loop: `clipping_lib`",
        "Depends on torch and numpy only: `pip install .` in a clone of the course.",
        loop,
    )
    text += "\n" + _module_table(
        "The course's lab bench: `clipping_lib.lab`",
        "What the lessons are built from; it needs the `course` extra: "
        "`pip install \".[course]\"`.",
        bench,
    )
    _write_if_changed(API_TABLES, text)


def copy_mathjax(app, exception) -> None:
    """Put the MathJax files into the built site's _static/mathjax."""
    if exception is not None or app.builder.format != "html":
        return
    import mathjax  # the django-static-mathjax package: MathJax 3 files, no Django needed

    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)
    shutil.copy2(source.parent / "LICENSE", target / "LICENSE")


def setup(app):
    app.connect("config-inited", stage_notebooks)
    app.connect("config-inited", write_api_tables)
    app.connect("build-finished", copy_mathjax)
