r"""Per-sample gradient clipping, as in DP-SGD (Abadi et al. 2016), with ``torch.func``.

Batch clipping bounds the norm of the *mean* gradient; one example with a huge gradient
still decides its direction. DP-SGD clips every example's gradient :math:`g_i` (all
parameters together) before averaging, so no example moves the update by more than
:math:`C/B`:

.. math::  \tilde g = \frac{1}{B}\Big(\sum_{i=1}^{B} g_i
           \min\big(1, \tfrac{C}{\lVert g_i\rVert}\big) + \mathcal{N}(0, \sigma^2 C^2 I)\Big)

The clipping here is exact (no epsilon): a clipped example has norm exactly ``C``.
Per-sample gradients come from ``torch.func``: ``vmap`` over the batch of ``grad`` of the
loss of one example, evaluated with ``functional_call``.

An example's gradient is only defined when the model treats examples independently. A
``BatchNorm`` layer that normalises with the batch's statistics (in training mode, or
always with ``track_running_stats=False``) mixes the examples: each gradient depends on
the whole batch, and computed one example at a time it would be silently wrong (each
example normalised alone). Such models are refused with a ``ValueError`` that names the
layer, as Opacus refuses them; ``GroupNorm``, ``LayerNorm`` or ``InstanceNorm`` do not
mix examples, and a ``BatchNorm`` in eval mode with running statistics does not either.

Norms are accumulated in float32 (float64 for float64 gradients): in float16 the square
of an example's norm overflows above 256, which would clip that example to 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from clipping_lib._checks import check_threshold

__all__ = ["clip_per_sample", "dp_sgd_gradient", "per_sample_grads", "per_sample_norms"]

Grads = dict[str, Tensor]


def per_sample_grads(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor
) -> Grads:
    """The gradient of ``loss_fn(model(x_i), y_i)`` for every example: name -> ``(B, *shape)``.

    Only trainable parameters (``requires_grad``) get gradients, as in ``backward()``;
    frozen ones stay constants of the model. Random layers (dropout) draw an independent
    mask for every example (``vmap(randomness="different")``), as they do in a batch.
    A layer that mixes examples (a ``BatchNorm`` using batch statistics) raises a
    ``ValueError`` naming it, before anything is computed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _refuse_layers_that_mix_examples(model)
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def loss_of_one(params: Grads, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_example = vmap(grad(loss_of_one), in_dims=(None, 0, 0), randomness="different")
    return per_example(params, inputs, targets)


def _refuse_layers_that_mix_examples(model: nn.Module) -> None:
    for name, module in model.named_modules():
        batch_stats = isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or not module.track_running_stats
        )
        if batch_stats:
            kind = type(module).__name__
            raise ValueError(
                f"model has a {kind} at {name!r} that normalises with the batch's statistics, "
                "so each example's gradient depends on the whole batch and per-sample "
                "gradients are not defined (computed one example at a time they would be "
                "silently wrong); replace it with GroupNorm or LayerNorm, as Opacus requires, "
                "or use it in eval mode with track_running_stats=True"
            )


def per_sample_norms(grads: Grads) -> Tensor:
    r"""The L2 norm of each example's whole gradient, :math:`\lVert g_i\rVert`, shape ``(B,)``,
    accumulated and returned in float32 (float64 if a gradient is float64)."""
    wide = any(g.dtype == torch.float64 for g in grads.values())
    dtype = torch.float64 if wide else torch.float32
    squares = [
        torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=dtype).square() for g in grads.values()
    ]
    return torch.stack(squares).sum(dim=0).sqrt()


def clip_per_sample(grads: Grads, max_norm: float) -> Grads:
    r"""Each example's gradient scaled by :math:`\min(1, C/\lVert g_i\rVert)` (new tensors)."""
    max_norm = check_threshold(max_norm, "max_norm")
    norms = per_sample_norms(grads)
    scale = max_norm / torch.clamp(norms, min=max_norm) if max_norm > 0 else torch.zeros_like(norms)
    return {name: g * scale.view(-1, *[1] * (g.ndim - 1)).to(g.dtype) for name, g in grads.items()}


def dp_sgd_gradient(
    grads: Grads,
    max_norm: float,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
) -> Grads:
    r"""DP-SGD's gradient: the sum of per-sample clipped gradients plus Gaussian noise of
    standard deviation :math:`\sigma C`, divided by the batch size. The noise is drawn on
    the gradients' device (on ``generator``'s, if one is given)."""
    noise_multiplier = check_threshold(noise_multiplier, "noise_multiplier")
    clipped = clip_per_sample(grads, max_norm)
    result = {}
    for name, g in clipped.items():
        noise = _gaussian(g.shape[1:], g, generator) if noise_multiplier else 0
        result[name] = (g.sum(dim=0) + noise_multiplier * max_norm * noise) / len(g)
    return result


def _gaussian(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise with ``like``'s dtype and device, drawn on ``generator``'s
    device (a generator belongs to one device), then moved to ``like``'s."""
    device = like.device if generator is None else generator.device
    noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=device)
    return noise.to(like.device)
