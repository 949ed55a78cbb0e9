r"""Real clipping bugs from public issue trackers, reproduced small, with their fixes.

Notebook 10's bug gallery shows each bug in a few lines; what it needs beyond
``clipping_lib.clip`` lives here:

* :func:`clip_order_norms`: the norm of the gradient the optimizer gets when norm
  clipping runs before or after ``GradScaler.unscale_`` (Lightning-AI/pytorch-lightning#9599).
  Clipping the scaled gradient :math:`s g` to :math:`c` and then unscaling gives
  :math:`g \min(1, c / (s\lVert g\rVert))`: the threshold becomes :math:`c / s`.
* :func:`clip_grad_norm_with_sparse_`: norm clipping that also takes sparse gradients
  (``nn.Embedding(sparse=True)``), which ``clip_grad_norm_`` refuses on every foreach
  path (pytorch/tutorials#2245).
* :func:`pipeline_stage_clip` and :func:`dtensor_norm_item`: experiments for a
  :class:`~clipping_lib.lab.workers.WorkerGroup` of two gloo processes. The first splits
  a model into two pipeline stages, one per process, and clips each stage by its own
  norm (wrong) or by the norm of both (right) (pytorch/torchtitan#596). The second reads
  norms of FSDP2 gradients with ``.item()``, which gives the local shard's value while
  the norm is a pending reduction, and with ``.full_tensor()`` (pytorch/pytorch#166638).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from clipping_lib._checks import as_tensor_list, check_eps, check_norm_type, check_threshold
from clipping_lib.clip import clip_grads_with_norm_, get_total_norm
from clipping_lib.distributed import clip_sharded_grads_
from clipping_lib.lab.parallel import fully_sharded_model, make_batch, make_model

__all__ = [
    "clip_grad_norm_with_sparse_",
    "clip_order_norms",
    "dense_twins",
    "dtensor_norm_item",
    "pipeline_stage_clip",
    "sparse_embedding_params",
    "total_norm_with_sparse",
]


def clip_order_norms(
    grad_norms: np.ndarray, max_norm: float, loss_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""Norms after clipping, for true gradient norms ``grad_norms``: ``(right, wrong)``.

    Right (``unscale_`` first): :math:`\min(n, c)`. Wrong (clip the scaled gradient
    :math:`s g`, then unscale): :math:`\min(s n, c) / s = \min(n, c / s)`.
    """
    max_norm = check_threshold(max_norm, "max_norm")
    if not (np.isfinite(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale}")
    norms = np.asarray(grad_norms, dtype=np.float64)
    if np.any(norms < 0):
        raise ValueError("grad_norms must be >= 0")
    return np.minimum(norms, max_norm), np.minimum(norms * loss_scale, max_norm) / loss_scale


def total_norm_with_sparse(tensors: Tensor | list[Tensor], norm_type: float | str = 2.0) -> Tensor:
    r""":func:`~clipping_lib.clip.get_total_norm` that also takes sparse COO tensors.

    A sparse tensor's norm is the norm of its values once coalesced (duplicate indices
    summed), the same number as the norm of its dense form, without building it.
    """
    tensors = as_tensor_list(tensors, "tensors")
    p = check_norm_type(norm_type)
    dense = [t.coalesce().values() if t.is_sparse else t for t in tensors]
    return get_total_norm(dense, p)


@torch.no_grad()
def clip_grad_norm_with_sparse_(
    parameters: Tensor | list[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
) -> Tensor:
    r"""``clip_grad_norm_`` for a mix of dense and sparse gradients; returns the total norm.

    Each gradient is scaled by :math:`\min(1, c / (\lVert g\rVert_p + \varepsilon))`, a
    sparse one in place through its values (after coalescing, so every stored value is
    scaled once).
    """
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm")
    eps = check_eps(eps)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = total_norm_with_sparse(grads, norm_type)
    coef = torch.clamp(max_norm / (total_norm + eps), max=1.0)
    for g in grads:
        (g.values() if g.is_sparse else g).mul_(coef.to(g.dtype))
    return total_norm


# ---------------------------------------------------------------------------------------
# Experiments for a WorkerGroup of two gloo processes
# ---------------------------------------------------------------------------------------


def sparse_embedding_params(scale: float = 10.0) -> list[nn.Parameter]:
    """An ``Embedding(10, 3, sparse=True)`` and a linear head after one backward.

    The embedding's gradient is sparse (rows 1, 2 and 5 touched); the head's are dense.
    """
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 3, sparse=True)
    head = nn.Linear(3, 1)
    (head(embedding(torch.tensor([1, 2, 2, 5]))).sum() * scale).backward()
    return [embedding.weight, head.weight, head.bias]


def dense_twins(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Copies of ``params`` whose gradients are the dense versions of theirs."""
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for twin, p in zip(twins, params, strict=True):
        twin.grad = p.grad.to_dense().clone()
    return twins


def _stage_grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _full_batch_reference(seed: int, max_norm: float) -> tuple[nn.Module, Tensor, Tensor]:
    """The whole model in one process: its clipped gradient, flat, and the norm before."""
    model = make_model(seed)
    x, y = make_batch(32, seed)
    torch.mean((model(x) - y) ** 2).backward()
    grad = _stage_grads(model)
    norm = torch.linalg.vector_norm(grad)
    return model, grad * torch.clamp(max_norm / (norm + 1e-6), max=1.0), norm


def pipeline_stage_clip(max_norm: float = 1.0, seed: int = 0) -> dict[str, Tensor]:
    """Two pipeline stages of :func:`~clipping_lib.lab.parallel.make_model`, one per rank.

    Rank 0 holds ``Linear(8, 32)`` and ``Tanh``, rank 1 ``Linear(32, 4)`` and the loss. The
    activation goes forward with ``send``/``recv``, its gradient comes back the same way,
    so each rank ends with the true gradient of its own layers. Returns, on each rank:
    ``stage_norm`` (this stage's norm), ``local_clipped`` (this stage clipped by its own
    norm: wrong), ``global_norm`` and ``global_clipped`` (clipped by the norm of both
    stages: right), and ``reference``, this stage's slice of the single-process clipped
    gradient, with ``reference_norm``.
    """
    if dist.get_world_size() != 2:
        raise ValueError(f"pipeline_stage_clip needs 2 ranks, got {dist.get_world_size()}")
    rank = dist.get_rank()
    whole, reference, reference_norm = _full_batch_reference(seed, max_norm)
    x, y = make_batch(32, seed)
    boundary = sum(p.numel() for p in whole[0].parameters())
    results = {}
    for mode in ("local", "global"):
        full = make_model(seed)
        stage = nn.Sequential(full[0], full[1]) if rank == 0 else full[2]
        if rank == 0:
            hidden = stage(x)
            dist.send(hidden.detach(), dst=1)
            grad_hidden = torch.empty_like(hidden)
            dist.recv(grad_hidden, src=1)
            hidden.backward(grad_hidden)
        else:
            hidden = torch.empty(32, 32)
            dist.recv(hidden, src=0)
            hidden.requires_grad_(True)
            torch.mean((stage(hidden) - y) ** 2).backward()
            dist.send(hidden.grad, dst=0)
        params = list(stage.parameters())
        results["stage_norm"] = get_total_norm([p.grad for p in params])
        if mode == "local":
            clip_grads_with_norm_(params, max_norm, results["stage_norm"])
        else:
            results["global_norm"] = clip_sharded_grads_(params, max_norm)
        results[f"{mode}_clipped"] = _stage_grads(stage)
    own = slice(0, boundary) if rank == 0 else slice(boundary, None)
    results["reference"] = reference[own]
    results["reference_norm"] = reference_norm
    return results


def dtensor_norm_item(max_norm: float = 1.0, seed: int = 0) -> dict[str, object]:
    """Norms of FSDP2 gradients read with ``.item()`` and with ``.full_tensor()``, per rank.

    Every rank shards the same model with ``fully_shard`` and runs the whole batch, so
    each gradient equals the single-process one. The norm of one sharded gradient
    (``torch.linalg.vector_norm`` of the first layer's weight gradient, as a per-layer
    log would take it) is a DTensor whose placement is a pending reduction over the
    ranks: ``.item()`` reads this rank's shard only. Returns ``layer_placements``,
    ``layer_item``, ``layer_full`` (``.full_tensor().item()``) and ``layer_reference``
    (single process); and for the total norm that ``clip_grad_norm_`` returns,
    ``total_placements``, ``total_item`` and ``total_reference``.
    """
    whole, _, total_reference = _full_batch_reference(seed, max_norm)
    model = fully_sharded_model(seed)
    x, y = make_batch(32, seed)
    torch.mean((model(x) - y) ** 2).backward()
    layer_norm = torch.linalg.vector_norm(model[0].weight.grad)
    total_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return {
        "layer_placements": str(layer_norm.placements),
        "layer_item": layer_norm.item(),
        "layer_full": layer_norm.full_tensor().item(),
        "layer_reference": torch.linalg.vector_norm(whole[0].weight.grad).item(),
        "total_placements": str(total_norm.placements),
        "total_item": total_norm.item(),
        "total_reference": total_reference.item(),
    }
