r"""Lesson 10's exercises: value clipping per element, the AMP-order bug's threshold, and
the global threshold that matches Keras' per-variable ``clipnorm``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipping_lib.lab.exercises._core import Exercise

__all__ = [
    "clamped_fractions",
    "effective_threshold",
    "ex1",
    "ex2",
    "ex3",
    "matching_global_threshold",
]


# --- Exercise 1: which gradients does value clipping change? ---------------------------


def clamped_fractions(grads: dict[str, Tensor], clip_value: float) -> dict[str, float]:
    """The fraction of each gradient's elements that ``clip_grad_value_(clip_value)`` changes."""
    return {name: (g.abs() > clip_value).double().mean().item() for name, g in grads.items()}


def _example_grads() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    scales = {"W1": 0.02, "b1": 0.05, "W2": 0.3, "b2": 1.0}
    return {n: s * torch.randn(4, 8, generator=generator) for n, s in scales.items()}


def _same_names(answer, reference) -> str | None:
    got = answer(_example_grads(), 0.05)
    if not isinstance(got, dict) or set(got) != set(_example_grads()):
        return "return a dict with one entry per gradient name, e.g. {'W1': 0.25, ...}."
    return None


def _fractions(answer, reference) -> str | None:
    grads = _example_grads()
    got, expected = answer(grads, 0.05), reference(grads, 0.05)
    counts = {n: (g.abs() > 0.05).sum().item() for n, g in grads.items()}
    if all(math.isclose(float(got[n]), counts[n]) for n in got) and any(counts.values()):
        return "those are counts of elements: divide by the number of elements for a fraction."
    per_tensor = {n: float(torch.linalg.vector_norm(g) > 0.05) for n, g in grads.items()}
    if all(math.isclose(float(got[n]), per_tensor[n]) for n in got) and got != expected:
        return (
            "value clipping acts on each element, not on a tensor's norm: count the elements "
            "with |g| > c."
        )
    for name in expected:
        if not math.isclose(float(got[name]), expected[name], abs_tol=1e-9):
            return f"{name}: you gave {float(got[name]):.3f}, expected {expected[name]:.3f}."
    return None


ex1 = Exercise(
    "Exercise 1 · Value clipping in Lightning",
    clamped_fractions,
    [_same_names, _fractions],
    verified="the fraction of elements with |g| > c, for every gradient",
    hints=[
        "clip_grad_value_ clamps each element to [-c, c]: an element changes when |g| > c.",
        "(g.abs() > c) is a boolean tensor; .double().mean() is the fraction of True.",
    ],
)


# --- Exercise 2: the threshold a run really uses with the AMP-order bug ------------------


def effective_threshold(
    max_norm: float, steps: int, init_scale: float = 2.0**16, growth_interval: int = 2000
) -> float:
    r"""The threshold on the true gradient when clipping runs before ``unscale_``.

    The clip sees :math:`s g`, so it caps :math:`\lVert g\rVert` at :math:`c/s`; a
    ``GradScaler`` doubles :math:`s` after every ``growth_interval`` steps without overflow.
    """
    scale = init_scale * 2 ** (steps // growth_interval)
    return max_norm / scale


_SCALER_CASES = [(1.0, 0), (1.0, 10_000), (0.5, 4_999), (2.0, 2_000)]


def _threshold(answer, reference) -> str | None:
    for c, steps in _SCALER_CASES:
        got, expected = float(answer(c, steps)), reference(c, steps)
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        if math.isclose(got, c * 2.0**16 * 2 ** (steps // 2000), rel_tol=1e-9):
            return (
                "the clip sees s times the gradient, so it caps the true norm at c / s, not c * s."
            )
        if math.isclose(got, c / 2.0**16, rel_tol=1e-9):
            return "the scale grows: it doubles after every 2000 steps without overflow."
        if math.isclose(got, c / (2.0**16 * 2 ** (steps / 2000)), rel_tol=1e-9):
            return "the scale doubles once per full 2000 steps: use integer division (//)."
        return f"for c={c}, steps={steps} you gave {got:.4g}; expected {expected:.4g}."
    return None


ex2 = Exercise(
    "Exercise 2 · The threshold a run really uses",
    effective_threshold,
    [_threshold],
    verified="c / s with s = 2^16 doubled per 2000 overflow-free steps, for four runs",
    hints=[
        "Clipping before unscale_ sees s * g: which true norm does a cap of c on s * g allow?",
        "After n overflow-free steps the scale is 2**16 * 2 ** (n // 2000).",
    ],
)


# --- Exercise 3: a global threshold for Keras' clipnorm ---------------------------------


def matching_global_threshold(variable_norms: list[float], clipnorm: float) -> float:
    r"""The ``clip_grad_norm_`` threshold that leaves the same total norm as ``clipnorm``.

    Per-variable clipping leaves variable :math:`i` at norm :math:`\min(n_i, c)`, so the
    total is :math:`\sqrt{\sum_i \min(n_i, c)^2}`; a global clip to that value gives the
    same step length (but not the same direction).
    """
    return math.sqrt(sum(min(n, clipnorm) ** 2 for n in variable_norms))


_NORM_CASES = [([3.0, 0.5, 2.0, 0.1], 1.0), ([0.2, 0.3], 1.0), ([5.0, 5.0, 5.0, 5.0], 2.0)]


def _matching(answer, reference) -> str | None:
    for norms, c in _NORM_CASES:
        got, expected = float(answer(list(norms), c)), reference(norms, c)
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        if math.isclose(got, c * math.sqrt(len(norms)), rel_tol=1e-9):
            return (
                f"√k·c is the largest total clipnorm can leave, reached only when every "
                f"variable is clipped; for norms {norms} not all are."
            )
        if math.isclose(got, sum(min(n, c) for n in norms), rel_tol=1e-9):
            return "the total norm is the root of the sum of squares, not the sum of the norms."
        if math.isclose(got, c, rel_tol=1e-9):
            return "clipnorm caps each variable at c, so the total norm can exceed c."
        return f"for norms {norms} and c={c} you gave {got:.4g}; expected {expected:.4g}."
    return None


ex3 = Exercise(
    "Exercise 3 · Porting Keras' clipnorm",
    matching_global_threshold,
    [_matching],
    verified="the total norm clipnorm leaves, sqrt(Σ min(n_i, c)²), on three gradients",
    hints=[
        "After clipnorm=c, variable i has norm min(n_i, c).",
        "The total norm of independent variables is the root of the sum of their squares.",
    ],
)
