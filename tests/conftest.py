"""Shared test helpers: pairs of identical parameter sets, one for us and one for PyTorch."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
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
