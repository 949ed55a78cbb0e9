"""A real JupyterLab on 127.0.0.1 and a headless Debian Chromium driven by Playwright.

The server gets a free port, a random token, temporary settings and a temporary copy
of notebooks/, and is shut down at the end whatever happens. The browser fixtures
(``chromium_path``, ``browser``, ``artifacts``) are in tests/conftest.py: where Chromium is
missing the tests are skipped with the reason, except in CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .chromium import ARTIFACTS

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Milliseconds from a key press on a panel's slider to its new picture, by panel.
LATENCIES: dict[str, list[float]] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory, chromium_path) -> dict:
    """Start JupyterLab on a copy of the notebooks; yield its URL and token; stop it."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(NOTEBOOKS, root / "notebooks")
    # Render every cell (no windowing), so each panel can be scrolled to and moved.
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
            f"--ServerApp.root_dir={root / 'notebooks'}", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={root / 'settings'}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{base}/api/status?token={token}", process)
        yield {"base": base, "token": token, "log": root / "server.log"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the in-browser slider latencies (key press to new picture) and save them."""
    if not LATENCIES:
        return
    terminalreporter.section("slider latency in JupyterLab (key press to new picture)")
    for name, values in sorted(LATENCIES.items()):
        ordered = sorted(values)
        p95 = ordered[round(0.95 * (len(ordered) - 1))]
        terminalreporter.write_line(
            f"{name}: median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "latency.json").write_text(json.dumps(LATENCIES, indent=1))
