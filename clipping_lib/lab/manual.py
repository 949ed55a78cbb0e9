r"""Clipping written by hand, the way a learner writes it first, and the vectorised fix.

These are for teaching. :mod:`clipping_lib.clip` is the complete, tested version.

The naive norm clip asks the device for one Python float per parameter
(``.item()``): each call waits for all queued work to finish (a *host sync*) and
launches its own small kernels. The vectorised version computes every per-tensor
norm in one ``torch._foreach_norm`` call, combines them on the device, and scales
with one ``torch._foreach_mul_``: no value ever comes back to Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def naive_clip_grad_value_(parameters: Iterable[Tensor], clip_value: float) -> None:
    r"""Clamp each gradient element to :math:`[-c, c]`, one parameter at a time."""
    for p in parameters:
        if p.grad is not None:
            p.grad.clamp_(min=-clip_value, max=clip_value)


@torch.no_grad()
def naive_clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> float:
    r"""Global L2 clipping with a Python loop: :math:`\lVert g\rVert = \sqrt{\sum_i
    \lVert g_i\rVert^2}`, then :math:`g \leftarrow g \cdot c / (\lVert g\rVert + 10^{-6})`
    if that factor is below 1. Returns the norm before clipping, as a float.

    Costs one host sync (``.item()``) per parameter, and two small kernels (a norm, then a
    multiply when clipping) per parameter.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total_sq = 0.0
    for g in grads:
        total_sq += g.norm(2).item() ** 2  # host sync, once per tensor
    total_norm = total_sq**0.5
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:  # a Python branch: needs the number on the host
        for g in grads:
            g.mul_(clip_coef)
    return total_norm


@torch.no_grad()
def vectorized_clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    r"""Global L2 clipping with no host sync: all norms in one foreach call, the
    coefficient :math:`\min(1, c / (\lVert g\rVert + 10^{-6}))` kept on the device.
    Returns the norm before clipping, as a 0-d tensor.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    per_tensor = torch.stack(torch._foreach_norm(grads, 2.0))
    total_norm = torch.linalg.vector_norm(per_tensor, 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))
    return total_norm
