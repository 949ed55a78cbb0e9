"""Clipping strategies as objects with one call per step, and the record each call returns.

Every strategy, fixed or adaptive, is a :class:`Clipper`: called with the parameters
after ``backward()``, it clips their gradients in place and returns a :class:`ClipStep`
saying what it did. The training loops and the monitor take any ``Clipper``, so a new
method plugs in without touching them.

A ``ClipStep`` holds 0-d tensors, not Python floats, so recording it costs no host
sync; the monitor turns a whole history into numbers once, at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from clipping_lib._checks import check_eps, check_threshold
from clipping_lib.clip import clip_grad_norm_, clip_grad_value_, get_total_norm


@dataclass(frozen=True)
class ClipStep:
    """What one clipping call did (all 0-d tensors)."""

    total_norm: Tensor  # the global L2 norm of the gradients *before* clipping
    threshold: Tensor  # the threshold in force at this step (inf when none)
    clipped: Tensor  # bool: did this step change the gradients?


class Clipper(Protocol):
    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep: ...


def _grads(parameters: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


class NoClip:
    """Measure the gradient norm, change nothing."""

    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        norm = get_total_norm(_grads(parameters))
        return ClipStep(norm, torch.tensor(float("inf")), torch.tensor(False))

    def __repr__(self) -> str:
        return "NoClip()"


class NormClip:
    r"""Global norm clipping, fixed threshold: :math:`g \leftarrow g \min(1, c/\lVert g\rVert)`."""

    def __init__(self, max_norm: float, *, eps: float = 1e-6) -> None:
        self.max_norm = check_threshold(max_norm, "max_norm")
        self.eps = check_eps(eps)

    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        norm = clip_grad_norm_(list(parameters), self.max_norm, eps=self.eps)
        threshold = torch.tensor(self.max_norm)
        return ClipStep(norm, threshold, norm > threshold)

    def __repr__(self) -> str:
        return f"NormClip(max_norm={self.max_norm:g})"


class ValueClip:
    r"""Element-wise clipping, fixed threshold: :math:`g_i \leftarrow \max(-c, \min(g_i, c))`."""

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_threshold(clip_value, "clip_value")

    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        params = list(parameters)
        grads = _grads(params)
        norm = get_total_norm(grads)
        clipped = get_total_norm(grads, "inf") > self.clip_value
        clip_grad_value_(params, self.clip_value)
        return ClipStep(norm, torch.tensor(self.clip_value), clipped)

    def __repr__(self) -> str:
        return f"ValueClip(clip_value={self.clip_value:g})"
