r"""Clipping strategies as objects with one call per step, and the record each call returns.

Every strategy, fixed or adaptive, is a :class:`Clipper`: called with the parameters
after ``backward()``, it clips their gradients in place and returns a :class:`ClipStep`
saying what it did. The training loops and the monitor take any ``Clipper``, so a new
method plugs in without touching them.

A ``Clipper`` takes what ``clip_grad_norm_`` takes: one tensor (a single ``Parameter`` is
one parameter), or any iterable of tensors (a generator is consumed once), with the same
``TypeError`` for anything else.

**Non-finite steps** (one policy for every clipper). If the global norm :math:`n` is NaN
or inf, the gradients are scaled as ``clip_grad_norm_`` scales them with any finite
threshold: by :math:`\min(1, c/(n + \varepsilon))`, which is NaN for a NaN norm and 0
for an infinite one, so infinite entries become NaN. The gradients stay non-finite, so a
``GradScaler`` (or a skip-step check) still sees the overflow and skips the step, as it
would with ``clip_grad_norm_``. Such a norm never enters a clipper's statistics, and the
step is not counted as clipped (its ``total_norm`` says what happened).

A ``ClipStep`` holds 0-d tensors on the gradients' device, not Python floats, so
recording it costs no host sync; the monitor turns a whole history into numbers once,
at the end. Norms and thresholds are at least float32 whatever the gradients' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from clipping_lib._checks import as_parameter_list, check_eps, check_threshold
from clipping_lib.clip import (
    TensorOrTensors,
    _group_by_device_and_dtype,
    _norm_of_groups,
    clip_grad_norm_,
    clip_grad_value_,
    get_total_norm,
)

__all__ = ["ClipStep", "Clipper", "NoClip", "NormClip", "ValueClip", "nonfinite_coefficient"]



@dataclass(frozen=True)
class ClipStep:
    """What one clipping call did (all 0-d tensors, on the gradients' device)."""

    total_norm: Tensor  # the global L2 norm of the gradients *before* clipping
    threshold: Tensor  # the threshold in force at this step (inf when none)
    clipped: Tensor  # bool: did the threshold scale this (finite) step down?


class Clipper(Protocol):
    def __call__(self, parameters: TensorOrTensors) -> ClipStep: ...


def parameters_with_grads(parameters: TensorOrTensors) -> list[Tensor]:
    """The gradients of ``parameters``, taken as ``clip_grad_norm_`` takes them."""
    return [p.grad for p in as_parameter_list(parameters, stacklevel=4) if p.grad is not None]


def stat_dtype(grads: list[Tensor]) -> torch.dtype:
    """float32, or float64 when a gradient is float64: statistics never in fp16/bf16."""
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def stat_norm(grads: list[Tensor]) -> Tensor:
    """The global L2 norm, accumulated and returned in :func:`stat_dtype` (no fp16 overflow)."""
    return _norm_of_groups(_group_by_device_and_dtype(grads), 2.0, None, dtype=stat_dtype(grads))


def nonfinite_coefficient(norm: Tensor, coefficient: Tensor) -> Tensor:
    r"""``coefficient`` for a finite ``norm``; for a NaN or inf one, ``clip_grad_norm_``'s
    :math:`\min(1, c/n)` with any finite :math:`c`: NaN or 0 (no host sync)."""
    return torch.where(torch.isfinite(norm), coefficient, torch.clamp(1.0 / norm, max=1.0))


def scale_grads_(grads: list[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-d tensor ``coef`` (no host sync)."""
    for (device, dtype), group in _group_by_device_and_dtype(grads).items():
        torch._foreach_mul_(group, coef.to(device, dtype))


def full_like_norm(value: float, norm: Tensor) -> Tensor:
    """A 0-d tensor holding ``value``, with the dtype and device of ``norm``."""
    return torch.full((), value, dtype=norm.dtype, device=norm.device)


def _as_stat(norm: Tensor) -> Tensor:
    return norm if norm.dtype in (torch.float32, torch.float64) else norm.float()


class NoClip:
    """Measure the gradient norm, change nothing."""

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        norm = stat_norm(parameters_with_grads(parameters))
        never = torch.zeros_like(norm, dtype=torch.bool)
        return ClipStep(norm, full_like_norm(float("inf"), norm), never)

    def __repr__(self) -> str:
        return "NoClip()"


class NormClip:
    r"""Global norm clipping, fixed threshold: :math:`g \leftarrow g \min(1, c/(\lVert g\rVert
    + \varepsilon))`, exactly ``clip_grad_norm_(parameters, c)``.

    ``clipped`` is true when that coefficient is below 1, which includes the norms in
    :math:`(c - \varepsilon, c]` that the :math:`\varepsilon` term shrinks slightly.
    ``max_norm=inf`` measures and changes nothing.
    """

    def __init__(self, max_norm: float, *, eps: float = 1e-6) -> None:
        self.max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
        self.eps = check_eps(eps)

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        params = as_parameter_list(parameters, stacklevel=3)
        norm = clip_grad_norm_(params, self.max_norm, eps=self.eps)
        coef = torch.clamp(self.max_norm / (norm + self.eps), max=1.0)  # as clip_grad_norm_
        clipped = torch.isfinite(norm) & (coef < 1)
        norm = _as_stat(norm)
        return ClipStep(norm, full_like_norm(self.max_norm, norm), clipped)

    def __repr__(self) -> str:
        return f"NormClip(max_norm={self.max_norm:g})"


class ValueClip:
    r"""Element-wise clipping, fixed threshold: :math:`g_i \leftarrow \max(-c, \min(g_i, c))`,
    exactly ``clip_grad_value_(parameters, c)``."""

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_threshold(clip_value, "clip_value", allow_inf=True)

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        params = as_parameter_list(parameters, stacklevel=3)
        grads = [p.grad for p in params if p.grad is not None]
        norm = stat_norm(grads)
        largest = get_total_norm(grads, "inf").to(norm.device)
        clipped = torch.isfinite(norm) & (largest > self.clip_value)
        clip_grad_value_(params, self.clip_value)
        return ClipStep(norm, full_like_norm(self.clip_value, norm), clipped)

    def __repr__(self) -> str:
        return f"ValueClip(clip_value={self.clip_value:g})"
