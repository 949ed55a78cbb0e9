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

**Steps with no gradients** (the second policy). When no parameter passed has a
``.grad`` (a frozen part with its own clipper, experts of a mixture that got no tokens,
``zero_grad(set_to_none=True)`` before the first backward), nothing was measured: the
step enters no statistic (AutoClip's history, ZClip's warm-up, EMAs and step count, the
monitor's percentiles and clip rate), and its :class:`ClipStep` says so with
``has_grads=False``, ``total_norm`` NaN ("no measurement", as NumPy's ``nan*``
functions read it), ``clipped`` false and ``threshold`` the threshold in force. A norm
of 0 would be a measurement: 30 such steps would pull a percentile or an EMA to 0 and
clip the next real gradients to nothing.

**DTensor gradients** (FSDP2, tensor parallelism). The norm is the norm of the *whole*
gradient: each clipper takes ``.full_tensor()`` of the DTensor norm (a scalar all-reduce
over the mesh, no host sync), so every rank holds the same plain 0-d tensor, equal to
the norm a single process would measure, and keeps its statistics on it; the gradients
are scaled shard by shard (``to_local()``) by that one coefficient. Every rank must call
the clipper, as it calls the optimizer. :class:`NormClip` clips exactly as
``clip_grad_norm_`` does (whose return value is, as in PyTorch, a DTensor) and records
the full norm, a plain tensor, in its ``ClipStep``. :class:`~clipping_lib.adaptive.AGC`
refuses DTensor parameters (its units would straddle shards).

A ``ClipStep`` holds 0-d tensors on the gradients' device, not Python floats, so
recording it costs no host sync; the monitor turns a whole history into numbers once,
at the end. Norms and thresholds are at least float32 whatever the gradients' dtype.
"""

from __future__ import annotations

import sys
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
    """What one clipping call did (0-d tensors, on the gradients' device, and a flag).

    ``has_grads`` is ``False`` for a step where no parameter had a gradient: then
    ``total_norm`` is NaN (not measured), ``clipped`` is false, ``threshold`` is the one
    in force, and no statistic was updated. It defaults to ``True``, so
    ``ClipStep(norm, threshold, clipped)`` records a measured step.
    """

    total_norm: Tensor  # the global L2 norm of the gradients *before* clipping
    threshold: Tensor  # the threshold in force at this step (inf when none)
    clipped: Tensor  # bool: did the threshold scale this (finite) step down?
    has_grads: bool = True  # False: no parameter had a .grad; total_norm is NaN


class Clipper(Protocol):
    def __call__(self, parameters: TensorOrTensors) -> ClipStep: ...


def parameters_with_grads(parameters: TensorOrTensors) -> list[Tensor]:
    """The gradients of ``parameters``, taken as ``clip_grad_norm_`` takes them."""
    return [p.grad for p in as_parameter_list(parameters, stacklevel=4) if p.grad is not None]


def _dtensor_class() -> type | None:
    """``DTensor``, if ``torch.distributed.tensor`` has been imported (no DTensor exists
    otherwise, and importing it here would cost every user seconds)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def full_value(t: Tensor) -> Tensor:
    """``t``, or, for a DTensor, its whole value as a plain tensor (``full_tensor()``: a
    collective over its mesh that every rank must join; the same result on every rank)."""
    if type(t) is Tensor:
        return t
    dtensor = _dtensor_class()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def local_value(t: Tensor) -> Tensor:
    """``t``, or, for a DTensor, this rank's shard (``to_local()``, which shares storage)."""
    if type(t) is Tensor:
        return t
    dtensor = _dtensor_class()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def is_dtensor(t: Tensor) -> bool:
    """Is ``t`` a DTensor?"""
    dtensor = _dtensor_class()
    return type(t) is not Tensor and dtensor is not None and isinstance(t, dtensor)


def no_grads_step(threshold: Tensor) -> ClipStep:
    """The record of a step with no gradients: NaN norm, not clipped, ``has_grads=False``,
    on ``threshold``'s device and in its dtype."""
    nan = torch.full_like(threshold, float("nan"))
    return ClipStep(nan, threshold, torch.zeros_like(threshold, dtype=torch.bool), False)


def stat_dtype(grads: list[Tensor]) -> torch.dtype:
    """float32, or float64 when a gradient is float64: statistics never in fp16/bf16."""
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def stat_norm(grads: list[Tensor]) -> Tensor:
    """The global L2 norm, accumulated and returned in :func:`stat_dtype` (no fp16 overflow);
    for DTensor gradients the full norm, a plain tensor (:func:`full_value`)."""
    groups = _group_by_device_and_dtype(grads)
    return full_value(_norm_of_groups(groups, 2.0, None, dtype=stat_dtype(grads)))


def nonfinite_coefficient(norm: Tensor, coefficient: Tensor) -> Tensor:
    r"""``coefficient`` for a finite ``norm``; for a NaN or inf one, ``clip_grad_norm_``'s
    :math:`\min(1, c/n)` with any finite :math:`c`: NaN or 0 (no host sync)."""
    return torch.where(torch.isfinite(norm), coefficient, torch.clamp(1.0 / norm, max=1.0))


def scale_grads_(grads: list[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-d tensor ``coef`` (no host sync); a
    DTensor gradient shard by shard, since ``coef`` is the same on every rank."""
    local = [local_value(g) for g in grads]
    for (device, dtype), group in _group_by_device_and_dtype(local).items():
        torch._foreach_mul_(group, coef.to(device, dtype))


def full_like_norm(value: float, norm: Tensor) -> Tensor:
    """A 0-d tensor holding ``value``, with the dtype and device of ``norm``."""
    return torch.full((), value, dtype=norm.dtype, device=norm.device)


def _as_stat(norm: Tensor) -> Tensor:
    return norm if norm.dtype in (torch.float32, torch.float64) else norm.float()


class NoClip:
    """Measure the gradient norm, change nothing."""

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        grads = parameters_with_grads(parameters)
        if not grads:
            return no_grads_step(torch.tensor(float("inf")))
        norm = stat_norm(grads)
        never = torch.zeros_like(norm, dtype=torch.bool)
        return ClipStep(norm, full_like_norm(float("inf"), norm), never)

    def __repr__(self) -> str:
        return "NoClip()"


class NormClip:
    r"""Global norm clipping, fixed threshold: :math:`g \leftarrow g \min(1, c/(\lVert g\rVert
    + \varepsilon))`, exactly ``clip_grad_norm_(parameters, c)``.

    ``clipped`` is true when that coefficient is below 1, which includes the norms in
    :math:`(c - \varepsilon, c]` that the :math:`\varepsilon` term shrinks slightly.
    ``max_norm=inf`` measures and changes nothing. With DTensor gradients it clips as
    ``clip_grad_norm_`` does, and its ``ClipStep`` holds the full norm as a plain tensor
    (the DTensor norm's ``full_tensor()``), the same on every rank.
    """

    def __init__(self, max_norm: float, *, eps: float = 1e-6) -> None:
        self.max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
        self.eps = check_eps(eps)

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        params = as_parameter_list(parameters, stacklevel=3)
        if all(p.grad is None for p in params):
            return no_grads_step(torch.tensor(self.max_norm))
        norm = full_value(clip_grad_norm_(params, self.max_norm, eps=self.eps))
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
        if not grads:
            return no_grads_step(torch.tensor(self.clip_value))
        norm = stat_norm(grads)
        largest = full_value(get_total_norm(grads, "inf")).to(norm.device)
        clipped = torch.isfinite(norm) & (largest > self.clip_value)
        clip_grad_value_(params, self.clip_value)
        return ClipStep(norm, full_like_norm(self.clip_value, norm), clipped)

    def __repr__(self) -> str:
        return f"ValueClip(clip_value={self.clip_value:g})"
