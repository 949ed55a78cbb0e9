"""Where Debian's Chromium lives, how the tests start it, and where they leave artefacts.

Shared by the JupyterLab tests (tests/browser) and the website tests (tests/website); the
fixtures that use it are in tests/conftest.py, so a test session starts one Playwright.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
