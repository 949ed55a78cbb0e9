r"""AdamW step by step on the tiny GPT, with the gradient scaled, spiked or clipped.

Two questions of notebook 09 are answered by one loop, :func:`trace_adamw`:

* **Scale invariance.** Adam's update is :math:`\eta\,\hat m/(\sqrt{\hat v}+\epsilon)`.
  Multiplying every gradient by a constant :math:`c` multiplies :math:`m` by :math:`c` and
  :math:`\sqrt v` by :math:`|c|`, so the update is unchanged as long as
  :math:`\sqrt{\hat v} \gg \epsilon`. :func:`adamw_updates` feeds one recorded sequence of
  gradients, times ``c``, to ``torch.optim.AdamW`` and returns its updates: no feedback
  through training, so any difference is the :math:`\epsilon` term alone.
* **A spike's weight.** Multiply the gradient of one step by ``spike_factor``: its square
  enters :math:`v` with weight :math:`1-\beta_2` and decays by :math:`\beta_2` per step, so
  the following updates shrink for about :math:`1/(1-\beta_2)` steps and more. With
  ``max_norm`` the spike is clipped first, and its weight in :math:`m` and :math:`v` is
  bounded.

The loop is the plain recipe: ``torch.optim.AdamW``, the gradient scaled, then
``clip_grad_norm_`` when ``max_norm`` is given, then the step; it records per step the
norm before clipping, the norm of the update :math:`\lVert\theta_{t+1}-\theta_t\rVert`,
:math:`\sum v`, the sum of Adam's second moments over all weights, and the *fresh gain*,
the median over weights (with a non-zero gradient) of :math:`|g_t|/(\sqrt{\hat v_t}+\epsilon)`:
this step's own gradient in units of Adam's running scale, so how strongly the update
answers the newest data (of order 1 in steady training; small while an old spike
inflates :math:`v`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_positive
from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.threads import single_thread

__all__ = ["AdamTrace", "adamw_updates", "trace_adamw"]


@dataclass(frozen=True)
class AdamTrace:
    """Per step: loss, gradient norm before clipping, update norm, sum of v, fresh gain;
    and the weights after the last step."""

    loss: np.ndarray
    grad_norm: np.ndarray
    update_norm: np.ndarray
    v_sum: np.ndarray
    fresh_gain: np.ndarray
    weights: Tensor  # all weights after training, flattened


def trace_adamw(
    corpus: CharCorpus,
    config: GPTConfig,
    *,
    steps: int,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    batch_size: int = 8,
    grad_scale: float = 1.0,
    spike_step: int | None = None,
    spike_factor: float = 100.0,
    max_norm: float | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> AdamTrace:
    """Train ``GPT(config, seed)`` with AdamW for ``steps`` steps and record what Adam does."""
    steps = check_int(steps, "steps", 1)
    grad_scale = check_positive(grad_scale, "grad_scale")
    spike_factor = check_positive(spike_factor, "spike_factor")
    model = GPT(config, seed=seed).to(dtype)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    ids, targets = corpus.batches(steps, batch_size, config.context, seed=seed)
    records = torch.zeros(5, steps, dtype=dtype)
    beta2 = betas[1]
    with single_thread():
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(ids[step], targets[step])
            loss.backward()
            factor = grad_scale * (spike_factor if step == spike_step else 1.0)
            with torch.no_grad():
                for p in params:
                    p.grad.mul_(factor)
                before = [p.detach().clone() for p in params]
                if max_norm is None:
                    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
                else:
                    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            with torch.no_grad():
                update = torch.stack([(p - b).norm() for p, b in zip(params, before, strict=True)])
                states = [optimizer.state[p] for p in params]
                v_sum = sum(s["exp_avg_sq"].sum() for s in states)
                correction = (1 - beta2 ** states[0]["step"]).sqrt()
                ratios = torch.cat([
                    (p.grad / (s["exp_avg_sq"].sqrt() / correction + eps)).abs().flatten()
                    for p, s in zip(params, states, strict=True)
                ])  # fmt: skip
                gain = ratios[torch.cat([p.grad.flatten() for p in params]) != 0].median()
                records[:, step] = torch.stack([loss.detach(), norm, update.norm(), v_sum, gain])
    weights = torch.cat([p.detach().flatten() for p in params])
    loss, grad_norm, update_norm, v_sum, fresh_gain = records.double().numpy()
    return AdamTrace(loss, grad_norm, update_norm, v_sum, fresh_gain, weights)


def adamw_updates(
    gradients: list[list[Tensor]],
    scale: float = 1.0,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> Tensor:
    """The AdamW updates (flattened, one row per step) for ``scale`` times each gradient.

    ``gradients[t]`` holds the gradient of every weight at step ``t``; the weights start at
    zero and have no weight decay, so the updates depend on the gradients alone.
    """
    if not gradients:
        raise ValueError("gradients must hold at least one step")
    scale = check_positive(scale, "scale")
    params = [torch.zeros_like(g, requires_grad=True) for g in gradients[0]]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    updates = []
    for step_grads in gradients:
        before = torch.cat([p.detach().flatten() for p in params])
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g * scale
        optimizer.step()
        updates.append(torch.cat([p.detach().flatten() for p in params]) - before)
    return torch.stack(updates)
