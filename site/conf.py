"""Sphinx configuration: the course as a static website, built from the executed notebooks.

Build:  python -m sphinx -b html site build/site
Serve:  python -m http.server -d build/site -b 127.0.0.1 8000   (then open http://127.0.0.1:8000)

Each page shows the outputs stored in its notebook. Before Sphinx reads its sources,
``stage_notebooks`` copies every ``notebooks/NN_*.ipynb`` into ``site/notebooks/``
(gitignored) and prepares it for reading on the web: after each slider panel comes a marker
for the site's script and a note on running the panel in a notebook, and hidden solution
cells become collapsed cells. MathJax is served from the site itself (from the
``django-static-mathjax`` package), so a page renders its math with no network.

Live panels with no kernel: ``start_panel_frames`` runs, in the background while Sphinx
reads, ``python -m clipping_lib.lab.site_frames`` for each lesson whose frames in
``site/_panels/`` (gitignored, a cache keyed by what the frames depend on) are missing or
stale; each panel's own ``draw`` renders its frames. ``finish_panel_frames`` waits for them
and copies them into the site's ``_panels/``; ``_static/live_panels.js`` swaps them as the
reader moves a control. ``COURSE_SITE_FRAMES=off`` builds with static figures only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

SITE = Path(__file__).resolve().parent
REPO = SITE.parent
NOTEBOOKS = REPO / "notebooks"
STAGED = SITE / "notebooks"
API_TABLES = SITE / "_api_modules.md"  # written by write_api_tables, included by api.md
LESSON_LIST = SITE / "_lessons.md"  # written by write_lesson_list, included by index.md
FRAMES = SITE / "_panels"  # the panels' frames, one folder per lesson (a build cache)
README = REPO / "README.md"
LESSON_NAME = re.compile(r"^\d\d_\w+\.ipynb$")
PANEL_MIME = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = {"image/png", "image/jpeg", "image/svg+xml"}  # outputs the page shows as <img>
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
exclude_patterns = [
    "_build", "**/.ipynb_checkpoints", "_templates", API_TABLES.name, LESSON_LIST.name,
    FRAMES.name,
]  # fmt: skip

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
html_js_files = [("live_panels.js", {"defer": "defer"})]
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


def frames_enabled() -> bool:
    """False when ``COURSE_SITE_FRAMES=off``: the panels stay static figures."""
    return os.environ.get("COURSE_SITE_FRAMES", "on").lower() not in {"off", "0", "no"}


def readme_commands() -> list[str]:
    """The README's commands to install and open the course, from its "Two commands" section:
    the virtual environment, the CPU torch line and the install-and-open line."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Two commands") :]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    opening = next(i for i, block in enumerate(blocks) if "jupyter lab" in block)
    commands = [block.strip() for block in blocks[: opening + 1]]
    if not any("venv" in c for c in commands) or not any("torch" in c for c in commands):
        raise ValueError("README's Two commands section lost its venv or torch line")
    return commands


def _live_note(name: str, panel_cell_id: str, images: list[int]) -> dict:
    stem = name.removesuffix(".ipynb")
    markers = "".join(
        f'<div class="live-panel" data-manifest="../_panels/{stem}/{panel_cell_id}-{k}/'
        f'manifest.json" data-image="{image}"></div>\n'
        for k, image in enumerate(images)
    ) if frames_enabled() else ""  # fmt: skip
    moving = (
        "Move its controls: the site shows the frames the panel drew when the site was "
        "built, each control swept alone and the first two together. For every setting, "
        if frames_enabled()
        else "The site shows the figure it drew when the notebook was executed. To move it, "
    )
    commands = "\n".join(readme_commands())
    text = (
        f"{markers}\n"
        "````{admonition} Run this panel in a notebook\n"
        ":class: tip\n"
        f"{moving}run the notebook "
        f"[on Binder]({BINDER_URL}?urlpath=lab/tree/notebooks/{name}), "
        f"[in Colab]({COLAB_URL}/notebooks/{name}) (its first cell installs the library), "
        "or on your machine with the README's commands, from a clone of the course "
        "(skip the torch line on a machine with an NVIDIA GPU; as root, add "
        "`--allow-root` to `jupyter lab`):\n\n"
        f"```bash\n{commands}\n```\n"
        "````"
    )
    return {"cell_type": "markdown", "id": f"{panel_cell_id}-live", "metadata": {}, "source": text}


def web_version(notebook: dict, name: str) -> dict:
    """The notebook as the site shows it; its cells and outputs are otherwise unchanged.

    After each cell whose output is a slider panel comes a markdown cell: one marker per
    panel for the site's script (where its frames are, and which of the cell's pictures
    it is) and a note on running the panel in a notebook; a cell hidden in JupyterLab (a
    solution) is collapsed on the page; the widget state, which only a live kernel can
    use, is dropped.
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
        pictures = [o for o in outputs if IMAGE_MIMES & set(o.get("data", {}))]
        images = [i for i, o in enumerate(pictures) if PANEL_MIME in o.get("data", {})]
        if images:
            cells.append(_live_note(name, cell.get("id", f"cell-{len(cells)}"), images))
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
    bench = ["clipping_lib.lab", *public_modules("clipping_lib.lab")]
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


def lesson_title(notebook: dict) -> str:
    """The first heading of a lesson's first markdown cell (its title), without the ``#``."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ValueError("a lesson's first markdown cell has no '# title'")


def write_lesson_list(app, config) -> None:
    """The landing page's list of lessons, one linked title each, from the notebooks."""
    lines = []
    for path in lesson_paths():
        title = lesson_title(json.loads(path.read_text(encoding="utf-8")))
        lines.append(f"- [{title}](notebooks/{path.name})\n")
    _write_if_changed(LESSON_LIST, "".join(lines))


class _Frames:
    """The background job rendering the panels' frames of stale lessons, some at once."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.failures: list[str] = []
        self.rendered: list[str] = []


FRAME_JOB = _Frames()


def _render_lessons(stale: list[Path], jobs: int) -> None:
    running: list[tuple[Path, subprocess.Popen]] = []
    queue = list(stale)
    while queue or running:
        while queue and len(running) < jobs:
            path = queue.pop(0)
            command = [
                sys.executable, "-m", "clipping_lib.lab.site_frames", str(path),
                str(FRAMES / path.stem),
            ]  # fmt: skip
            process = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((path, process))
        path, process = running.pop(0)
        output = process.communicate()[0]
        if process.returncode != 0:
            FRAME_JOB.failures.append(f"{path.name} (exit {process.returncode}):\n{output[-4000:]}")
        else:
            FRAME_JOB.rendered.append(path.name)


def start_panel_frames(app, config) -> None:
    """Start rendering the frames of each lesson whose cached frames are missing or stale."""
    if not frames_enabled():
        return
    from clipping_lib.lab.site_frames import is_current

    FRAMES.mkdir(exist_ok=True)
    paths = lesson_paths()
    for folder in FRAMES.iterdir():
        if folder.is_dir() and folder.name not in {p.stem for p in paths}:
            shutil.rmtree(folder)
    stale = [p for p in paths if not is_current(p, FRAMES / p.stem)]
    jobs = int(os.environ.get("COURSE_SITE_JOBS", os.cpu_count() or 1))
    FRAME_JOB.thread = threading.Thread(target=_render_lessons, args=(stale, jobs), daemon=True)
    FRAME_JOB.thread.start()


def finish_panel_frames(app, exception) -> None:
    """Wait for the frames, then copy every lesson's panels into the site's ``_panels/``."""
    if exception is not None or app.builder.format != "html" or FRAME_JOB.thread is None:
        return
    FRAME_JOB.thread.join()
    if FRAME_JOB.failures:
        raise RuntimeError("panel frames failed:\n" + "\n".join(FRAME_JOB.failures))
    target = Path(app.outdir) / "_panels"
    if target.exists():
        shutil.rmtree(target)
    for path in lesson_paths():
        source = FRAMES / path.stem
        if source.is_dir():
            shutil.copytree(source, target / path.stem, ignore=shutil.ignore_patterns("*.json"))
            for manifest in source.glob("*/manifest.json"):
                shutil.copy2(manifest, target / path.stem / manifest.parent.name / manifest.name)


class _WordsAndParts:
    """Search words as Sphinx finds them, plus the parts of each snake_case name, so that
    "unscale" finds ``unscale_`` and "clip grad norm" finds ``clip_grad_norm_``."""

    def split(self, input: str) -> list[str]:
        words = super().split(input)
        parts = [p for w in words if "_" in w for p in w.split("_") if p]
        return words + parts


def use_word_parts_in_search(app) -> None:
    from sphinx.search import languages
    from sphinx.search.en import SearchEnglish

    languages["en"] = type("SearchEnglishWithParts", (_WordsAndParts, SearchEnglish), {})


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
    use_word_parts_in_search(app)
    app.connect("config-inited", start_panel_frames)
    app.connect("config-inited", stage_notebooks)
    app.connect("config-inited", write_lesson_list)
    app.connect("config-inited", write_api_tables)
    app.connect("build-finished", copy_mathjax)
    app.connect("build-finished", finish_panel_frames)
