r"""Value and norm clipping with the signatures and semantics of ``torch.nn.utils``.

Written from tensor primitives (``torch._foreach_*`` and ``torch.linalg.vector_norm``)
so that every step is visible. The hot path has no host synchronisation: no
``.item()`` and no Python ``if`` on a tensor, so on a GPU the whole clip is queued
without waiting for the device.

Norm clipping rescales all gradients together:

.. math::  g \leftarrow g \cdot \min\!\left(1, \frac{c}{\lVert g \rVert_p + \varepsilon}\right)

With PyTorch's :math:`\varepsilon = 10^{-6}` a clipped norm lands slightly *below* ``c``;
with ``eps=0.0`` it is exactly ``c`` (the form :math:`g \cdot c / \max(\lVert g\rVert, c)`
that optax and TensorFlow use). Value clipping clamps each element to ``[-c, c]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from clipping_lib._checks import (
    as_parameter_list,
    as_tensor_list,
    check_bool,
    check_eps,
    check_norm_type,
    check_threshold,
    check_total_norm,
)

__all__ = [
    "clip_by_norm",
    "clip_by_value",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
]

TensorOrTensors = Tensor | Iterable[Tensor]

# Devices with fused ``torch._foreach_*`` kernels (as in torch.utils._foreach_utils).
_FOREACH_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mtia")

Groups = dict[tuple[torch.device, torch.dtype], list[Tensor]]


def _group_by_device_and_dtype(tensors: list[Tensor]) -> Groups:
    """Split tensors into lists that one foreach kernel can take (same device, same dtype)."""
    groups: Groups = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def _use_foreach(foreach: bool | None, tensors: list[Tensor], device: torch.device) -> bool:
    """PyTorch's rule: ``None`` means foreach where it is supported, ``True`` insists on it."""
    supported = device.type in _FOREACH_DEVICE_TYPES
    if foreach is None:
        return supported and all(type(t) is Tensor for t in tensors)
    if foreach and not supported:
        raise RuntimeError(
            f"foreach=True was passed, but can't use the foreach API on {device.type} tensors"
        )
    return foreach


def _check_foreach(foreach: object) -> None:
    if foreach not in (None, True, False):
        raise TypeError(f"foreach must be None, True or False, got {foreach!r}")


def _grouped_grads(parameters: list[Tensor]) -> Groups:
    return _group_by_device_and_dtype([p.grad for p in parameters if p.grad is not None])


def _norm_of_groups(
    groups: Groups, p: float, foreach: bool | None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""The p-norm of the per-tensor p-norms, on the first group's device.

    ``dtype`` (``None``: each group's own) is the dtype the norms are accumulated and
    returned in: the adaptive clippers ask for float32 so an fp16 norm cannot overflow.
    """
    if not groups:
        return torch.tensor(0.0, dtype=dtype)
    first_device = next(iter(groups))[0]
    norms: list[Tensor] = []
    for (device, group_dtype), group in groups.items():
        cast = None if dtype in (None, group_dtype) else dtype
        if _use_foreach(foreach, group, device):
            norms.extend(torch._foreach_norm(group, p, dtype=cast))
        else:
            norms.extend(torch.linalg.vector_norm(t, p, dtype=cast) for t in group)
    return torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), p)


def _raise_if_nonfinite(total_norm: Tensor, p: float) -> None:
    # The one deliberate host sync, made only when the caller asks for the check.
    if not torch.isfinite(total_norm):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`"
        )


def _scale_groups_(
    groups: Groups, max_norm: float, total_norm: Tensor, eps: float, foreach: bool | None
) -> None:
    r"""Each tensor :math:`g \leftarrow g \min(1, c / (\text{total\_norm} + \varepsilon))`."""
    if not groups:
        return
    # Multiplying by a coefficient clamped at 1 (instead of `if coef < 1`) keeps
    # the decision on the device: no host sync.
    clip_coef = torch.clamp(max_norm / (total_norm + eps), max=1.0)
    for (device, _), group in groups.items():
        coef = clip_coef.to(device)
        if _use_foreach(foreach, group, device):
            torch._foreach_mul_(group, coef)
        else:
            for g in group:
                g.mul_(coef)


def _check_exact_clip(max_norm: float, eps: float) -> None:
    if eps == 0.0 and max_norm == 0.0:
        raise ValueError(
            "max_norm must be > 0 when eps=0.0: exact clipping scales by "
            "max_norm / max(norm, max_norm), which is 0/0 for max_norm=0"
        )


@torch.no_grad()
def get_total_norm(
    tensors: TensorOrTensors,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    r"""The p-norm of all ``tensors`` viewed as one vector: :math:`\lVert(\lVert t_1\rVert_p,
    \dots, \lVert t_n\rVert_p)\rVert_p`.

    Returns a 0-d tensor on the first tensor's device (``tensor(0.)`` for no tensors).
    Raises ``RuntimeError`` if ``error_if_nonfinite`` and the norm is NaN or infinite.
    """
    tensors = as_tensor_list(tensors, "tensors")
    p = check_norm_type(norm_type)
    check_bool(error_if_nonfinite, "error_if_nonfinite")
    _check_foreach(foreach)
    total_norm = _norm_of_groups(_group_by_device_and_dtype(tensors), p, foreach)
    if error_if_nonfinite:
        _raise_if_nonfinite(total_norm, p)
    return total_norm


@torch.no_grad()
def clip_grads_with_norm_(
    parameters: TensorOrTensors,
    max_norm: float,
    total_norm: Tensor,
    foreach: bool | None = None,
    *,
    eps: float = 1e-6,
) -> None:
    r"""Scale every ``.grad`` in place by :math:`\min(1, c / (\text{total\_norm} + \varepsilon))`.

    ``total_norm`` is the 0-d tensor from :func:`get_total_norm`, so the norm can be
    measured, logged or reduced across workers before the gradients are touched.
    """
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    total_norm = check_total_norm(total_norm)
    eps = check_eps(eps)
    _check_exact_clip(max_norm, eps)
    _check_foreach(foreach)
    _scale_groups_(_grouped_grads(params), max_norm, total_norm, eps, foreach)


@torch.no_grad()
def clip_grad_norm_(
    parameters: TensorOrTensors,
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    eps: float = 1e-6,
) -> Tensor:
    r"""Rescale all gradients together so that their total p-norm is at most ``max_norm``.

    :math:`g \leftarrow g \cdot \min(1, c / (\lVert g\rVert_p + \varepsilon))`.
    Returns the total norm **before** clipping. ``eps=0.0`` clips exactly to ``max_norm``;
    ``max_norm=inf`` measures and changes nothing (the coefficient is exactly 1 for a
    finite norm), PyTorch's idiom for logging the norm. A NaN or inf norm is handled as
    PyTorch does: the coefficient is NaN or 0, so the gradients stay non-finite and a
    ``GradScaler`` still skips the step.
    This is :func:`get_total_norm` followed by :func:`clip_grads_with_norm_`, with the
    gradients gathered and grouped once for both.
    """
    params = as_parameter_list(parameters)
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    p = check_norm_type(norm_type)
    check_bool(error_if_nonfinite, "error_if_nonfinite")
    eps = check_eps(eps)
    _check_exact_clip(max_norm, eps)
    _check_foreach(foreach)
    groups = _grouped_grads(params)
    total_norm = _norm_of_groups(groups, p, foreach)
    if error_if_nonfinite:
        _raise_if_nonfinite(total_norm, p)
    _scale_groups_(groups, max_norm, total_norm, eps, foreach)
    return total_norm


def _check_clip_value_fits(groups: Groups, clip_value: float) -> None:
    """Raise, before any gradient is touched, what clamping one of the groups would raise."""
    for _, dtype in groups:
        if dtype.is_complex:
            raise NotImplementedError(
                f"clip_grad_value_ cannot clamp complex gradients ({dtype}): "
                "clamp is not defined for complex numbers"
            )
        if math.isfinite(clip_value) and clip_value > torch.finfo(dtype).max:
            raise RuntimeError(
                f"clip_value={clip_value:g} cannot be converted to {dtype} without overflow "
                f"(largest {dtype}: {torch.finfo(dtype).max:g}); no gradient was changed"
            )


@torch.no_grad()
def clip_grad_value_(
    parameters: TensorOrTensors,
    clip_value: float,
    foreach: bool | None = None,
) -> None:
    r"""Clamp every gradient element in place: :math:`g_i \leftarrow \max(-c, \min(g_i, c))`.

    Everything is checked before any gradient changes: a ``clip_value`` that overflows one
    of the gradients' dtypes (1e5 with float16 gradients) or complex gradients raise the
    error PyTorch raises, with every gradient left as it was.
    """
    params = as_tensor_list(parameters, "parameters")
    clip_value = check_threshold(clip_value, "clip_value", allow_inf=True)
    _check_foreach(foreach)
    groups = _grouped_grads(params)
    _check_clip_value_fits(groups, clip_value)
    # Decided for every group first: foreach=True on an unsupported device raises here.
    plan = [(group, _use_foreach(foreach, group, device)) for (device, _), group in groups.items()]
    for group, use_foreach in plan:
        if use_foreach:
            torch._foreach_clamp_min_(group, -clip_value)
            torch._foreach_clamp_max_(group, clip_value)
        else:
            for g in group:
                g.clamp_(min=-clip_value, max=clip_value)


def clip_by_value(g: Tensor, clip_value: float) -> Tensor:
    r"""A new tensor with every element of ``g`` clamped to :math:`[-c, c]`.

    ``g`` must be a floating-point tensor: clamping a bool or integer tensor to a float
    bound would silently return another dtype.
    """
    if not isinstance(g, Tensor):
        raise TypeError(f"g must be a Tensor, got {type(g).__name__}")
    if not g.is_floating_point():
        raise TypeError(f"g must be a floating-point tensor, got {g.dtype}")
    clip_value = check_threshold(clip_value, "clip_value", allow_inf=True)
    return g.clamp(min=-clip_value, max=clip_value)


def clip_by_norm(
    g: Tensor, max_norm: float, norm_type: float | str = 2.0, *, eps: float = 0.0
) -> Tensor:
    r"""A new tensor :math:`g \cdot \min(1, c / (\lVert g\rVert_p + \varepsilon))`.

    The default ``eps=0.0`` is exact: the result has norm ``min(||g||, c)`` and, when
    ``g`` is not zero, the same direction as ``g``. It is differentiable everywhere it is
    finite: inside the ball (:math:`\lVert g\rVert + \varepsilon \le c`, ``g = 0``
    included) the map is the identity and its gradient is that of the identity, never
    the NaN of :math:`0/0` (the norm enters only where it clips). A NaN norm gives a NaN
    coefficient, as in ``clip_grad_norm_``.
    """
    if not isinstance(g, Tensor):
        raise TypeError(f"g must be a Tensor, got {type(g).__name__}")
    if not (g.is_floating_point() or g.is_complex()):
        raise TypeError(f"g must be a floating-point or complex tensor, got {g.dtype}")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    p = check_norm_type(norm_type)
    eps = check_eps(eps)
    _check_exact_clip(max_norm, eps)
    norm = torch.linalg.vector_norm(g, p)
    shifted = norm + eps
    over = shifted > max_norm
    # where(over, ...) twice: the division never sees the 0 of a zero g (its NaN gradient
    # would leak through the unselected branch).
    coef = torch.where(over, max_norm / torch.where(over, shifted, 1.0), 1.0)
    return g * torch.where(torch.isnan(norm), norm, coef)
