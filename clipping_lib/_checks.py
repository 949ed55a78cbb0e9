"""Argument checks shared by the clipping functions: each error names the argument."""

from __future__ import annotations

import math
import numbers
import types
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor


def check_threshold(value: object, name: str, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not a number >= 0.

    Infinity is refused unless ``allow_inf`` (``max_norm=inf``, PyTorch's "measure, don't
    clip": the coefficient :math:`\\min(1, \\infty / n)` is 1 for every finite norm).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(
            f"{name} must be finite, got {value}; to measure the norm without clipping, "
            "call get_total_norm"
        )
    return value


def check_norm_type(norm_type: object) -> float:
    """Return ``norm_type`` as a float p > 0 (``"inf"`` and ``math.inf`` give the max norm)."""
    if isinstance(norm_type, str):
        if norm_type.strip().lower() not in ("inf", "infinity"):
            raise ValueError(f"norm_type as a string must be 'inf', got {norm_type!r}")
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a number or 'inf', got {type(norm_type).__name__}")
    p = float(norm_type)
    if math.isnan(p) or p <= 0:
        raise ValueError(f"norm_type must be > 0 (or 'inf'), got {p}")
    return p


def check_eps(eps: object) -> float:
    """Return ``eps`` as a finite float >= 0."""
    return check_threshold(eps, "eps")


_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def as_tensor_list(tensors: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    """Turn a tensor or an iterable of tensors into a list, checking every element."""
    if isinstance(tensors, Tensor):
        return [tensors]
    if not isinstance(tensors, Iterable):
        raise TypeError(
            f"{name} must be a Tensor or an iterable of Tensors, got {type(tensors).__name__}"
        )
    items = list(tensors)
    for index, item in enumerate(items):
        # `type(...) in` first: isinstance on a Parameter goes through a slow metaclass hook.
        if type(item) not in _TENSOR_TYPES and not isinstance(item, Tensor):
            raise TypeError(
                f"{name} must contain only Tensors, got {type(item).__name__} at position {index}"
            )
    return items


def as_parameter_list(parameters: Tensor | Iterable[Tensor], stacklevel: int = 3) -> list[Tensor]:
    """What ``clip_grad_norm_`` does with ``parameters``: a tensor becomes ``[tensor]``, any
    iterable is consumed once (an empty generator warns, as in PyTorch), every element is
    checked to be a tensor. A single ``Parameter`` is one parameter, never its rows."""
    is_generator = isinstance(parameters, types.GeneratorType)
    params = as_tensor_list(parameters, "parameters")
    if is_generator and not params:
        warnings.warn(
            "`parameters` is an empty generator, no gradient clipping will occur.",
            stacklevel=stacklevel,
        )
    return params


def check_total_norm(total_norm: object) -> Tensor:
    """``total_norm`` must be a 0-d floating tensor, as returned by ``get_total_norm``."""
    if not isinstance(total_norm, Tensor):
        raise TypeError(f"total_norm must be a Tensor, got {type(total_norm).__name__}")
    if total_norm.ndim != 0:
        raise ValueError(
            f"total_norm must be a 0-d tensor (one norm for all gradients), "
            f"got shape {tuple(total_norm.shape)}"
        )
    if not torch.is_floating_point(total_norm):
        raise TypeError(f"total_norm must be a floating tensor, got {total_norm.dtype}")
    return total_norm


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool (or NumPy's), else raise a ``TypeError`` naming it:
    a truthy string such as ``"no"`` must not switch a check on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(value: object, name: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value
