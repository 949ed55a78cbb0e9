r"""Gradient clipping across processes: the global norm of sharded gradients, and the clip.

Clipping must see the gradient of the *whole* batch and the *whole* model. In
data-parallel training every worker holds the gradient of its own share of the batch
until the gradients are aggregated (all-reduced in DDP, reduce-scattered in FSDP), so the
order is

    backward  ->  aggregate  ->  global norm  ->  clip  ->  optimizer step

When the aggregated gradient is sharded (FSDP, ZeRO, a manual flat split), each rank
holds only its shard :math:`g_r`, and its local norm is not the model's. The global
p-norm is :math:`(\sum_r \lVert g_r\rVert_p^p)^{1/p}`, the max norm
:math:`\max_r \lVert g_r\rVert_\infty`: one ``all_reduce`` of a scalar per step.

* :func:`sharded_total_norm`: that global norm, the same 0-d tensor on every rank.
* :func:`clip_sharded_grads_`: clip every rank's shards by it, so all ranks scale alike.

For DTensor gradients (FSDP2, tensor parallelism) PyTorch's own ``clip_grad_norm_`` and
this package's :func:`clipping_lib.clip.clip_grad_norm_` already reduce across the mesh;
these functions are for plain tensors sharded by hand. The course's process harness
(``WorkerGroup``) and its experiments live on the lab bench (``lab/workers.py`` and
``lab/parallel.py``); nothing here needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from clipping_lib._checks import as_tensor_list, check_norm_type, check_threshold
from clipping_lib.clip import clip_grads_with_norm_, get_total_norm

__all__ = ["clip_sharded_grads_", "sharded_total_norm"]


@torch.no_grad()
def sharded_total_norm(
    local_tensors: Tensor | Sequence[Tensor], norm_type: float | str = 2.0, group=None
) -> Tensor:
    r"""The p-norm of tensors sharded over the ranks of ``group``; every rank calls it.

    Each rank passes only its own shards :math:`g_r`. For finite p the ranks add their
    :math:`\lVert g_r\rVert_p^p` with an ``all_reduce(SUM)`` and take the p-th root; for
    the max norm they take an ``all_reduce(MAX)`` of :math:`\lVert g_r\rVert_\infty`.
    Every rank gets the same 0-d tensor, in the shards' dtype as ``get_total_norm``
    returns it; the powers and the sum are taken in float32 (float64 for float64 shards),
    since :math:`\lVert g_r\rVert_p^p` overflows float16 for a norm above 256 when p = 2.
    """
    p = check_norm_type(norm_type)
    tensors = [t for t in as_tensor_list(local_tensors, "local_tensors") if t.numel()]
    local = get_total_norm(tensors, p)  # a rank may own no elements: its norm is 0
    if math.isinf(p):
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
        return total
    wide = torch.float64 if local.dtype == torch.float64 else torch.float32
    total = local.to(wide).pow(p)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.pow(1.0 / p).to(local.dtype)


@torch.no_grad()
def clip_sharded_grads_(
    parameters: Tensor | Sequence[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    group=None,
    *,
    eps: float = 1e-6,
) -> Tensor:
    """Global norm clipping of sharded gradients; returns the global norm before clipping.

    Every rank passes the parameters (shards) it owns; the norm is
    :func:`sharded_total_norm` of their gradients, so every rank scales by the same factor.
    """
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = sharded_total_norm(grads, norm_type, group)
    clip_grads_with_norm_(params, max_norm, total_norm, eps=eps)
    return total_norm
