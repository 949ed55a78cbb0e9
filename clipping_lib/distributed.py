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
* :func:`grouped_total_norm`: one norm over several groups of plain shards, each group
  reduced only over the ranks that hold *distinct* parts of it (experts over the
  expert-parallel group, dense shards over the data-parallel group, replicated tensors
  not at all), so no part is missed and none is counted twice.
* :func:`mesh_total_norm` and :func:`clip_grad_norm_across_meshes_`: the same for DTensor
  gradients that live on different device meshes (experts on one, dense parameters on
  another, plain tensors replicated), which one ``get_total_norm`` call cannot combine.

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

__all__ = [
    "clip_grad_norm_across_meshes_",
    "clip_sharded_grads_",
    "grouped_total_norm",
    "mesh_total_norm",
    "sharded_total_norm",
]


@torch.no_grad()
def sharded_total_norm(
    local_tensors: Tensor | Sequence[Tensor], norm_type: float | str = 2.0, group=None
) -> Tensor:
    r"""The p-norm of tensors sharded over the ranks of ``group``; every rank calls it.

    Each rank passes only its own shards :math:`g_r`. For finite p the ranks add their
    :math:`\lVert g_r\rVert_p^p` with an ``all_reduce(SUM)`` and take the p-th root; for
    the max norm they take an ``all_reduce(MAX)`` of :math:`\lVert g_r\rVert_\infty`.
    Every rank gets the same 0-d tensor, in the shards' dtype as ``get_total_norm``
    returns it; the powers, the sum and the max are taken in float64 on every rank (one
    scalar: the message has the same size everywhere), since
    :math:`\lVert g_r\rVert_p^p` overflows float16 for a norm above 256 when p = 2.

    A rank may own no elements: it passes its empty shards (``numel() == 0``), which still
    carry the dtype, and contributes 0. A rank that passes no tensor at all contributes 0
    and gets the result in float32; pass the empty shards so every rank agrees on the dtype.
    """
    p = check_norm_type(norm_type)
    tensors = as_tensor_list(local_tensors, "local_tensors")
    dtype = torch.float32
    if tensors:
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device if tensors else torch.device("cpu")
    owned = [t for t in tensors if t.numel()]  # the max norm of no element is undefined
    local = get_total_norm(owned, p).to(device) if owned else torch.zeros((), device=device)
    wide = local.to(torch.float64)
    if math.isinf(p):
        dist.all_reduce(wide, op=dist.ReduceOp.MAX, group=group)
        return wide.to(dtype)
    total = wide.pow(p)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.pow(1.0 / p).to(dtype)


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


_REPLICATED = "replicated"


def _wide_power(norm: Tensor, p: float) -> Tensor:
    """``norm ** p`` in float32 (float64 for float64 norms): p-th powers overflow float16."""
    wide = torch.float64 if norm.dtype == torch.float64 else torch.float32
    return norm.to(wide).pow(p)


def _combine(parts: list[Tensor], p: float, dtype: torch.dtype) -> Tensor:
    r"""Combine the groups' reduced pieces: :math:`(\sum_k s_k)^{1/p}`, or the max for p = inf."""
    if not parts:
        return torch.tensor(0.0, dtype=dtype)
    stacked = torch.stack([part.reshape(()).to(parts[0].device) for part in parts])
    total = stacked.max() if math.isinf(p) else stacked.sum().pow(1.0 / p)
    return total.to(dtype)


def _as_process_group(over: object, index: int):
    """The process group ``over`` names: a ProcessGroup, or a 1-D DeviceMesh's group."""
    if over is None:
        raise ValueError(
            f"groups[{index}]: the group is None; name it: a ProcessGroup or 1-D DeviceMesh "
            f"over which the pieces are distinct (dist.group.WORLD for every rank), or "
            f"{_REPLICATED!r} when every rank holds the whole tensors"
        )
    if hasattr(over, "get_group") and hasattr(over, "ndim"):  # a DeviceMesh
        if over.ndim != 1:
            raise ValueError(
                f"groups[{index}]: a {over.ndim}-D DeviceMesh names no single group; pass the "
                "1-D sub-mesh over which the pieces are distinct (mesh['ep'])"
            )
        return over.get_group()
    if isinstance(over, dist.ProcessGroup):
        return over
    raise TypeError(
        f"groups[{index}]: the group must be a ProcessGroup, a 1-D DeviceMesh or "
        f"{_REPLICATED!r}, got {type(over).__name__}"
    )


@torch.no_grad()
def grouped_total_norm(groups: Sequence[tuple], norm_type: float | str = 2.0) -> Tensor:
    r"""One p-norm over several groups of plain-tensor shards; every rank calls it alike.

    Each entry of ``groups`` is ``(tensors, over)``: this rank's pieces of one set of
    gradients, and where those pieces are **distinct**. ``over`` is the process group (or
    1-D ``DeviceMesh``) whose ranks hold different parts of them, or ``"replicated"`` when
    every rank holds the whole tensors. Group :math:`k` contributes
    :math:`s_k = \sum_{r \in \text{over}_k} \lVert g_{k,r}\rVert_p^p` (one
    ``all_reduce(SUM)`` over its own group; nothing for a replicated group), and the norm
    is :math:`(\sum_k s_k)^{1/p}`; for the max norm, ``all_reduce(MAX)`` and the largest.

    Reducing a group over more ranks than hold distinct parts counts each replica again
    (experts summed over the whole world are counted once per data-parallel replica);
    over fewer ranks, parts are missed (each expert-parallel group sees only its experts).
    Powers and sums are taken in float32 (float64 for float64 input), whatever the
    gradients' dtype. Returns the same 0-d tensor on every rank, in the first group's dtype.
    """
    p = check_norm_type(norm_type)
    if isinstance(groups, (Tensor, str)) or not isinstance(groups, Sequence):
        raise TypeError("groups must be a sequence of (tensors, group) pairs")
    checked = []
    for index, entry in enumerate(groups):
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"groups[{index}] must be a (tensors, group) pair")
        tensors = as_tensor_list(entry[0], f"groups[{index}] tensors")
        if any(_is_dtensor(t) for t in tensors):
            raise TypeError(
                f"groups[{index}] holds DTensors, which know their own mesh: use "
                "mesh_total_norm for them"
            )
        over = entry[1]
        replicated = isinstance(over, str) and over == _REPLICATED
        group = None if replicated else _as_process_group(over, index)
        checked.append(([t for t in tensors if t.numel()], group))
    dtype = next((ts[0].dtype for ts, _ in checked if ts), torch.float32)
    parts = []
    for tensors, group in checked:
        local = get_total_norm(tensors, p)  # a rank may hold no element of a group: 0
        part = _wide_power(local, 1.0 if math.isinf(p) else p)
        if group is not None:
            op = dist.ReduceOp.MAX if math.isinf(p) else dist.ReduceOp.SUM
            dist.all_reduce(part, op=op, group=group)
        parts.append(part)
    return _combine(parts, p, dtype)


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "placements") and hasattr(t, "to_local")


@torch.no_grad()
def mesh_total_norm(tensors: Tensor | Sequence[Tensor], norm_type: float | str = 2.0) -> Tensor:
    r"""The p-norm of gradients that live on several device meshes, as one plain tensor.

    ``torch.nn.utils.get_total_norm`` cannot mix DTensors of different meshes, nor
    DTensors and plain tensors. Here the DTensors are grouped by mesh; each group's norm
    is reduced by DTensor over its own mesh (``full_tensor()``), where a ``Replicate``
    dimension is counted once and a ``Shard`` dimension is summed; plain tensors count
    as replicated (every rank holds them whole, as tensor-parallel LayerNorm weights do).
    The groups combine as :math:`(\sum_k \lVert g_k\rVert_p^p)^{1/p}` (the largest for
    the max norm), the combination torchtitan uses for expert and dense parameters.
    Every rank gets the same 0-d plain tensor; the combination runs in float32 (float64
    for float64 gradients).
    """
    p = check_norm_type(norm_type)
    tensors = [t for t in as_tensor_list(tensors, "tensors") if t.numel()]
    by_mesh: dict[int, list[Tensor]] = {}
    plain: list[Tensor] = []
    for t in tensors:
        if _is_dtensor(t):
            by_mesh.setdefault(id(t.device_mesh), []).append(t)
        else:
            plain.append(t)
    dtype = tensors[0].dtype if tensors else torch.float32
    parts = []
    for group in [*by_mesh.values(), plain]:
        if not group:
            continue
        norm = get_total_norm(group, p)
        norm = norm.full_tensor() if _is_dtensor(norm) else norm
        parts.append(_wide_power(norm, 1.0 if math.isinf(p) else p))
    return _combine(parts, p, dtype)


@torch.no_grad()
def clip_grad_norm_across_meshes_(
    parameters: Tensor | Sequence[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
) -> Tensor:
    r"""Global norm clipping for parameters on several meshes; returns the norm before clipping.

    The norm is :func:`mesh_total_norm` of the gradients, and every gradient, on every mesh
    and rank, is scaled by the same :math:`\min(1, c / (\lVert g\rVert + \varepsilon))`.
    """
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    grads = [q.grad for q in params if q.grad is not None]
    total_norm = mesh_total_norm(grads, norm_type)
    clip_grads_with_norm_(params, max_norm, total_norm, eps=eps)
    return total_norm
