"""Shared test helpers: pairs of identical parameter sets, one for us and one for PyTorch,
and the one headless Chromium (through Playwright) that the browser and website tests share."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from browser.chromium import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from hypothesis import settings

matplotlib.use("Agg")

# In CI, property tests draw the same examples on every run, so a red build is reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def make_params(
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    seed: int = 0,
    grad_none: tuple[int, ...] = (),
) -> list[torch.nn.Parameter]:
    """Parameters with seeded random gradients; indices in ``grad_none`` get no gradient."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for index, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype))
        if index not in grad_none:
            p.grad = (torch.randn(shape, generator=generator) * scale).to(dtype)
        params.append(p)
    return params


def clone_params(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """An independent copy (data and grads) to hand to the reference implementation."""
    copies = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        copies.append(q)
    return copies


def grads_of(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


@pytest.fixture
def twin_params():
    """A factory of (ours, reference) parameter lists with equal data and gradients."""

    def factory(*args, **kwargs):
        params = make_params(*args, **kwargs)
        return params, clone_params(params)

    return factory


@pytest.fixture(scope="session")
def chromium_path():
    """Debian's Chromium; skipped where it is missing, but a failure in CI (``CI`` set)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium in CI: {message}")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path):
    """One Playwright and one Chromium for the whole session: Playwright's sync API cannot
    start a second instance while the first is running in the same thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
