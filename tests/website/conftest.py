"""The course website, built once per test session into a temporary folder and served.

``built_site`` runs the README's build command (``python -m sphinx -b html site OUT``) with
the warnings written to a file, so that one test can treat them as errors while the others
still check the pages. ``site_url`` serves the result on 127.0.0.1 at a free port. The
browser fixtures (Debian's Chromium through Playwright) are those of tests/conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser.chromium import ARTIFACTS

REPO = Path(__file__).resolve().parents[2]
SITE_SOURCE = REPO / "site"
NOTEBOOKS = REPO / "notebooks"
README = REPO / "README.md"
BUILD_TIMEOUT_S = 900
SUMMARY: dict[str, float | int] = {}
PANEL_SIZES: dict[str, dict[str, int]] = {}  # "lesson/panel" -> frames, pictures, bytes


@dataclass(frozen=True)
class BuiltSite:
    root: Path  # the HTML output folder
    warnings: str  # what Sphinx warned about, one warning a line
    seconds: float  # wall time of the build

    def notebook_as_built(self, stem: str) -> dict:
        """The lesson's notebook as Sphinx read it (the site keeps a copy for download),
        so a page is compared with what it was built from, even if the notebook has
        changed since."""
        path = self.root / "_sources" / "notebooks" / f"{stem}.ipynb"
        return json.loads(path.read_text(encoding="utf-8"))

    def lessons_as_built(self) -> list[str]:
        """The stems of the lessons the site was built from, in course order."""
        return sorted(p.stem for p in (self.root / "_sources" / "notebooks").glob("*.ipynb"))

    def pages(self) -> list[Path]:
        """Every HTML page a reader can open (theme templates under _static excluded)."""
        return sorted(p for p in self.root.rglob("*.html") if "_static" not in p.parts)


def lessons() -> list[Path]:
    """notebooks/NN_*.ipynb in course order: each must become one page of the site."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _site_size_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> BuiltSite:
    """Build the site from the stored notebook outputs, as the README's command does."""
    work = tmp_path_factory.mktemp("website")
    out, warnings = work / "site", work / "warnings.txt"
    command = [
        sys.executable, "-m", "sphinx", "-b", "html", "-q", "-w", str(warnings),
        "-d", str(work / "doctrees"), str(SITE_SOURCE), str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        pytest.fail(f"the site did not build (exit {result.returncode}):\n{result.stderr[-6000:]}")
    site = BuiltSite(out, warnings.read_text() if warnings.exists() else "", seconds)
    SUMMARY.update(
        build_seconds=round(seconds, 1),
        pages=len(site.pages()),
        size_mb=round(_site_size_bytes(out) / 2**20, 1),
    )
    return site


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A browser that moves on mid-transfer closes the connection: not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="session")
def site_url(built_site):
    """Serve the built site on 127.0.0.1 at a free port; yield its base URL; stop."""
    server = _QuietServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(built_site.root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the build time, page count and size of the site, and save them."""
    if not SUMMARY:
        return
    terminalreporter.section("course website")
    terminalreporter.write_line(
        f"built in {SUMMARY['build_seconds']} s: {SUMMARY['pages']} pages, {SUMMARY['size_mb']} MB"
    )
    for name, numbers in sorted(PANEL_SIZES.items()):
        terminalreporter.write_line(
            f"  panel {name}: {numbers['frames']} states, {numbers['pictures']} pictures, "
            f"{numbers['bytes'] / 1e3:.0f} kB"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "site_build.json").write_text(
        json.dumps({**SUMMARY, "panels": PANEL_SIZES}, indent=1)
    )
