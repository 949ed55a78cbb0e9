r"""Notebook 08's experiment on logging the norm of FSDP2 (DTensor) gradients.

It runs inside :class:`clipping_lib.lab.workers.WorkerGroup` workers, so it lives apart
from the panel module (workers need no widgets). A norm of DTensors is itself a
DTensor. Over a list of gradients, ``torch.nn.utils.get_total_norm`` and
``clip_grad_norm_`` (PyTorch 2.13) return it ``Replicate()``-d: reduced, the same on
every rank. The norm of **one** sharded gradient, ``torch.linalg.vector_norm(p.grad)``
(what per-layer logging computes), comes back with a pending ``_NormPartial``
placement: ``.item()`` or ``.to_local()`` give this rank's partial value,
:math:`\lVert g_r\rVert`, and only ``.full_tensor()`` reduces it to
:math:`\big(\sum_r \lVert g_r\rVert^2\big)^{1/2}`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from clipping_lib.lab.parallel import fully_sharded_model, make_batch, make_model


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((model(x) - y) ** 2)


def dtensor_norm_logging(seed: int = 0, batch_size: int = 32) -> dict:
    """What each rank would log for FSDP2 gradient norms, with PyTorch's own functions.

    Returns, on each rank: ``total_placements`` and ``total_item`` (``get_total_norm``
    over all gradients), ``layer_placements``, ``layer_item`` (``.item()`` of the norm
    of the first layer's weight gradient), ``layer_full`` (its ``.full_tensor()``) and
    ``layer_reference`` (the same norm from one process on the full batch).
    """
    x, y = make_batch(batch_size, seed)
    reference = make_model(seed)
    _mse(reference, x, y).backward()
    rank, world = dist.get_rank(), dist.get_world_size()
    model = fully_sharded_model(seed)
    _mse(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()  # averaged shards

    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    layer = torch.linalg.vector_norm(model[0].weight.grad)
    return {
        "total_placements": str(total.placements),
        "total_item": total.item(),
        "layer_placements": str(layer.placements),
        "layer_item": layer.item(),
        "layer_full": layer.full_tensor().item(),
        "layer_reference": torch.linalg.vector_norm(reference[0].weight.grad).item(),
    }
