r"""The course's data-parallel experiments; each runs in every worker of a ``WorkerGroup``.

* :func:`ddp_clip_step`: DDP's all-reduced gradient has the single-process full-batch
  norm; clipping each worker's local gradient before aggregation gives another update.
* :func:`sharded_norms`: with sharded gradients (FSDP2 ``fully_shard`` and a manual
  flat sharding) a rank's local norm is wrong; the global p-norm is
  :math:`(\sum_r \lVert g_r\rVert_p^p)^{1/p}` over the shards :math:`g_r`, the max norm
  is :math:`\max_r \lVert g_r\rVert_\infty`.
* :func:`accumulation_no_sync`: with gradient accumulation under ``no_sync`` the
  gradient is complete only after the step that synchronises; clip there, once.
* :func:`dtensor_clippers`: the stateful clippers and the monitor on FSDP2's DTensor
  gradients keep their statistics on the full norm, as one process would.
* :func:`uneven_shards`: :func:`~clipping_lib.distributed.sharded_total_norm` when one
  rank owns no elements.

Run them with :class:`clipping_lib.lab.workers.WorkerGroup`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clipping_lib.adaptive import AutoClip, ZClip
from clipping_lib.clip import clip_grad_norm_, get_total_norm
from clipping_lib.distributed import clip_sharded_grads_, sharded_total_norm
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import NormClip

__all__ = [
    "accumulation_no_sync",
    "ddp_clip_step",
    "dtensor_clippers",
    "fully_sharded_model",
    "make_batch",
    "make_model",
    "sharded_norms",
    "uneven_shards",
]


def make_model(seed: int = 0) -> nn.Module:
    """A small MLP (8 -> 32 -> 4, tanh), the same on every rank for the same seed."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))


def fully_sharded_model(seed: int = 0) -> nn.Module:
    """:func:`make_model` under FSDP2 across this group: each layer's weights sharded by rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = make_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_batch(batch_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A regression batch ``(x, y)``; the last eighth of the targets are outliers (x 20).

    Split into equal chunks, the outliers land on the last rank, so the workers' local
    gradients differ a lot, as they do when one worker draws a bad batch.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 8, generator=generator)
    mixing = torch.randn(8, 4, generator=generator)
    y = torch.sin(x @ mixing) + 0.1 * torch.randn(batch_size, 4, generator=generator)
    y[batch_size - batch_size // 8 :] *= 20.0
    return x, y


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.mean((model(x) - y) ** 2)


def _flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _my_chunk(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    x, y = batch
    if len(x) % world_size:
        raise ValueError(f"batch_size {len(x)} must be divisible by world_size {world_size}")
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def _reference(batch: tuple[Tensor, Tensor], seed: int, max_norm: float) -> dict[str, Tensor]:
    """One process, the full batch: the gradient, its norms, and the clipped gradient."""
    model = make_model(seed)
    _loss(model, *batch).backward()
    grad = _flat_grad(model)
    return {
        "full_norm": torch.linalg.vector_norm(grad),
        "full_inf_norm": torch.linalg.vector_norm(grad, math.inf),
        "full_grad": grad,
        "full_clipped": grad * torch.clamp(max_norm / (grad.norm() + 1e-6), max=1.0),
    }


def ddp_clip_step(max_norm: float = 1.0, seed: int = 0, batch_size: int = 32) -> dict:
    """Clip after DDP's all-reduce (right) and before any aggregation (wrong).

    Returns, on each rank: the single-process ``full_norm``/``full_clipped`` of the whole
    batch; ``ddp_norm``, the norm ``clip_grad_norm_`` saw after DDP's backward, and
    ``ddp_clipped``, the gradient it left; ``local_norm``, the norm of this rank's own
    gradient, and ``local_then_mean``, the average over ranks of locally clipped
    gradients (what the optimizer would get if each worker clipped alone).
    """
    from torch.nn.parallel import DistributedDataParallel

    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)

    ddp = DistributedDataParallel(make_model(seed))
    _loss(ddp, x, y).backward()  # DDP averages the gradients over the ranks here
    result["ddp_norm"] = clip_grad_norm_(ddp.parameters(), max_norm)
    result["ddp_clipped"] = _flat_grad(ddp.module)

    alone = make_model(seed)
    _loss(alone, x, y).backward()
    result["local_norm"] = clip_grad_norm_(alone.parameters(), max_norm)  # wrong: local clip
    mean = _flat_grad(alone)
    dist.all_reduce(mean)
    result["local_then_mean"] = mean / dist.get_world_size()
    return result


def sharded_norms(max_norm: float = 1.0, seed: int = 0, batch_size: int = 32) -> dict:
    """Global norms of sharded gradients: FSDP2 ``fully_shard`` and a manual flat sharding.

    Returns, on each rank: the single-process reference (``full_norm``, ``full_inf_norm``,
    ``full_clipped``); for FSDP2, ``fsdp_local_norm`` (this rank's shards only: wrong),
    ``fsdp_norm`` and ``fsdp_inf_norm`` (``get_total_norm`` of the DTensor gradients, whose
    placements are ``fsdp_norm_placements`` before ``full_tensor()``) and
    ``fsdp_clipped`` (the full gradient after ``clip_grad_norm_``, gathered); for the
    manual sharding of the flat full-batch gradient, ``shard`` (this rank's slice),
    ``manual_local_norm``, ``manual_norm``, ``manual_inf_norm`` and ``manual_clipped``
    (this rank's slice after :func:`clip_sharded_grads_`).
    """
    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)

    model = fully_sharded_model(seed)
    _loss(model, x, y).backward()  # FSDP reduce-scatters: each rank keeps one shard, averaged
    grads = [p.grad for p in model.parameters()]
    result["fsdp_local_norm"] = get_total_norm([g.to_local() for g in grads])
    result["fsdp_inf_norm"] = get_total_norm(grads, math.inf).full_tensor()
    result["fsdp_norm_placements"] = str(get_total_norm(grads).placements)
    result["fsdp_norm"] = clip_grad_norm_(model.parameters(), max_norm).full_tensor()
    result["fsdp_clipped"] = torch.cat([g.full_tensor().reshape(-1) for g in grads])

    # A ZeRO-style flat sharding: rank r owns the r-th contiguous slice of every vector.
    own = result["full_grad"].tensor_split(dist.get_world_size())[dist.get_rank()]
    shard = nn.Parameter(torch.zeros_like(own))
    shard.grad = own.clone()
    result["shard"] = shard.grad.clone()
    result["manual_local_norm"] = get_total_norm(shard.grad)
    result["manual_inf_norm"] = sharded_total_norm(shard.grad, math.inf)
    result["manual_norm"] = clip_sharded_grads_([shard], max_norm)
    result["manual_clipped"] = shard.grad
    return result


def accumulation_no_sync(
    max_norm: float = 1.0, seed: int = 0, batch_size: int = 32, micro_batches: int = 4
) -> dict:
    """Gradient accumulation under DDP's ``no_sync``: clip once, after the syncing step.

    Each rank splits its chunk into ``micro_batches`` pieces; the loss of each is divided
    by ``micro_batches`` so the accumulated gradient is the full-batch mean. Returns, on
    each rank: ``micro_norms``, the norm of the accumulated gradient after each
    micro-batch (local until the last one, which all-reduces); ``clipped_once`` (clip
    after the syncing step: right) and ``clipped_every_step`` (clip after every
    micro-batch: wrong), with the single-process reference ``full_clipped``.
    """
    from contextlib import nullcontext

    from torch.nn.parallel import DistributedDataParallel

    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)
    pieces = list(zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True))
    if len(pieces) != micro_batches or len(x) % micro_batches:
        raise ValueError(f"each rank's {len(x)} examples must split into {micro_batches} pieces")

    for clip_every_step in (False, True):
        ddp = DistributedDataParallel(make_model(seed))
        norms = []
        for index, (xm, ym) in enumerate(pieces):
            syncs = index == micro_batches - 1
            with nullcontext() if syncs else ddp.no_sync():
                (_loss(ddp, xm, ym) / micro_batches).backward()
            if clip_every_step or syncs:
                norms.append(clip_grad_norm_(ddp.parameters(), max_norm))
            else:
                norms.append(get_total_norm([p.grad for p in ddp.parameters()]))
        key = "clipped_every_step" if clip_every_step else "clipped_once"
        result[key] = _flat_grad(ddp.module)
        if not clip_every_step:
            result["micro_norms"] = torch.stack(norms)
    return result


_CLIPPERS = {
    "AutoClip": lambda: AutoClip(40, window=4),
    "ZClip": lambda: ZClip(0.9, 1.0, warmup_steps=3),
    "NormClip": lambda: NormClip(0.5),
    "ClipMonitor(ZClip)": lambda: ClipMonitor(ZClip(0.9, 1.0, warmup_steps=3)),
}
_LOSS_SCALES = (1.0, 1.2, 0.9, 1.1, 8.0, 1.0, 0.8, 12.0)  # two spikes after the warm-up


def dtensor_clippers(seed: int = 0, batch_size: int = 32) -> dict:
    """Each clipper of ``_CLIPPERS`` on FSDP2 (DTensor) gradients and, in the same worker, on
    the single-process model over the whole batch, for the steps of ``_LOSS_SCALES`` (the
    loss multiplied by each, so the norm varies and spikes; the weights stay put).

    Returns, per clipper name: ``norm``, ``threshold``, ``clipped`` of the sharded run
    (stacked over steps), ``plain``, whether every recorded value was a plain tensor (not
    a DTensor), ``grad``, the full clipped gradient of the last step (gathered), and the
    same three statistics and ``grad`` of the single-process run under ``single_*``.
    """
    batch = make_batch(batch_size, seed)
    x, y = _my_chunk(batch)
    result = {}
    for name, make in _CLIPPERS.items():
        runs = {}
        for key, model, data in (
            ("", fully_sharded_model(seed), (x, y)),
            ("single_", make_model(seed), batch),
        ):
            clipper, steps = make(), []
            for scale in _LOSS_SCALES:
                model.zero_grad(set_to_none=True)
                (_loss(model, *data) * scale).backward()
                steps.append(clipper(model.parameters()))
            grads = [p.grad for p in model.parameters()]
            full = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads]
            runs[f"{key}grad"] = torch.cat([g.reshape(-1) for g in full])
            for field in ("total_norm", "threshold", "clipped"):
                values = [getattr(step, field) for step in steps]
                runs[f"{key}{field}"] = torch.stack(values)
                if not key:
                    runs.setdefault("plain", True)
                    runs["plain"] &= all(type(v) is Tensor for v in values)
        result[name] = runs
    return result


def uneven_shards(dtype: torch.dtype = torch.float64, norm_type: float | str = 2.0) -> Tensor:
    """:func:`~clipping_lib.distributed.sharded_total_norm` of ``0..9`` in ``dtype``, all of
    it on rank 0; every other rank owns no element (its shard is empty)."""
    values = torch.arange(10, dtype=dtype)
    shard = values if dist.get_rank() == 0 else values[:0]
    return sharded_total_norm([shard], norm_type)
