r"""What sets the size of a gradient norm: loss reduction, batch size, width.

A threshold like ``clip_grad_norm_(..., 1.0)`` is compared with a number whose scale is
set by choices unrelated to stability. With the loss *summed* over the :math:`N = BT`
tokens of a batch instead of averaged, every gradient is :math:`N` times larger. With the
mean, the batch gradient is the average of per-token gradients, a signal part plus noise
that shrinks about as :math:`1/\sqrt{B}`. A wider model has more weights to sum over.
:func:`gradient_norms` measures the norm on a few batches for one such choice.
"""

from __future__ import annotations

import numpy as np
import torch

from clipping_lib._checks import check_int
from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.threads import single_thread

__all__ = ["gradient_norms"]


def gradient_norms(
    corpus: CharCorpus,
    config: GPTConfig,
    *,
    batch_size: int = 8,
    reduction: str = "mean",
    batches: int = 4,
    seed: int = 0,
    model: GPT | None = None,
) -> np.ndarray:
    """The global gradient norm of ``model`` (default: a fresh ``GPT(config, seed)``) on
    ``batches`` training batches, one norm per batch."""
    batches = check_int(batches, "batches", 1)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    model = GPT(config, seed=seed) if model is None else model
    ids, targets = corpus.batches(batches, batch_size, config.context, seed=seed + 1)
    norms = []
    with single_thread():
        for i in range(batches):
            model.zero_grad(set_to_none=True)
            model.loss(ids[i], targets[i], reduction=reduction).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    model.zero_grad(set_to_none=True)
    return torch.stack(norms).double().numpy()
