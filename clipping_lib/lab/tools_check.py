r"""Checks of other tools' clipping against ``clipping_lib``, framework-independent.

Notebook 10 trains one small model on one batch with a tool's own clipping option and
a plain SGD optimizer with learning rate :math:`\eta`. The update the tool applied then
holds the gradient the optimizer received, :math:`g = (\theta_0 - \theta_1) / \eta`,
which is compared with what :func:`~clipping_lib.clip.clip_grad_norm_` gives:

* :func:`flat` and :func:`applied_gradient`: parameters or gradients as one vector, and
  the gradient recovered from an SGD step;
* :func:`relative_difference`: :math:`\lVert a - b\rVert / \lVert b\rVert`;
* :func:`clipnorm_view`: per-variable clipping (Keras ``clipnorm``) against global
  clipping (``global_clipnorm``, ``clip_grad_norm_``) as the threshold moves, computed
  from the per-variable gradient norms alone;
* :func:`ppo_surrogate`: PPO's clipped objective (Schulman et al. 2017), which clips
  the probability ratio, not the gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from clipping_lib._checks import as_tensor_list, check_positive, check_threshold

__all__ = [
    "ClipnormView",
    "applied_gradient",
    "clipnorm_view",
    "flat",
    "ppo_surrogate",
    "ppo_toy",
    "relative_difference",
]


def flat(tensors: Tensor | Iterable[Tensor]) -> Tensor:
    """All ``tensors`` (parameters, gradients or arrays of another framework converted
    with ``torch.as_tensor``) as one detached float64 vector, in order."""
    items = as_tensor_list(tensors, "tensors")
    if not items:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in items])


def applied_gradient(before: Tensor, after: Tensor, lr: float) -> Tensor:
    r"""The gradient a plain SGD step applied: :math:`(\theta_0 - \theta_1) / \eta`."""
    lr = check_positive(lr, "lr")
    if before.shape != after.shape:
        raise ValueError(f"before and after differ in shape: {before.shape} vs {after.shape}")
    return (before.double() - after.double()) / lr


def relative_difference(actual: Tensor, expected: Tensor) -> float:
    r""":math:`\lVert a - e\rVert_2 / \lVert e\rVert_2`, in float64 (``inf`` if ``e`` is 0
    and ``a`` is not)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    if actual.shape != expected.shape:
        raise ValueError(f"actual and expected differ in shape: {actual.shape} vs {expected.shape}")
    diff = torch.linalg.vector_norm(actual - expected).item()
    scale = torch.linalg.vector_norm(expected).item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


@dataclass(frozen=True)
class ClipnormView:
    thresholds: np.ndarray  # c, increasing
    per_variable_norm: np.ndarray  # total norm after clipping each variable to c
    global_norm: np.ndarray  # total norm after clipping all together to c
    per_variable_cosine: np.ndarray  # cosine(per-variable clipped, raw gradient)
    variables_clipped: np.ndarray  # how many variables per-variable clipping rescales


def clipnorm_view(variable_norms: Iterable[float], thresholds: Iterable[float]) -> ClipnormView:
    r"""Per-variable against global clipping of a gradient with per-variable norms :math:`n_i`.

    Per variable (Keras ``clipnorm``), each :math:`g_i` becomes
    :math:`g_i\, c / \max(n_i, c)`, so the total norm is
    :math:`\sqrt{\sum_i \min(n_i, c)^2}`, up to :math:`\sqrt{k}\,c` for :math:`k`
    variables, and the direction bends towards the small variables: cosine
    :math:`\sum_i n_i \min(n_i, c) / (\lVert n\rVert \sqrt{\sum_i \min(n_i,c)^2})`.
    Globally the norm is :math:`\min(\lVert n\rVert, c)` and the direction is kept.
    """
    norms = np.asarray(list(variable_norms), dtype=np.float64)
    grid = np.asarray(list(thresholds), dtype=np.float64)
    if norms.ndim != 1 or norms.size == 0 or np.any(norms < 0) or not np.all(np.isfinite(norms)):
        raise ValueError("variable_norms must be a non-empty list of finite numbers >= 0")
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("thresholds must be a non-empty list of numbers")
    for c in grid:
        check_positive(float(c), "thresholds")
    clipped = np.minimum(norms[None, :], grid[:, None])
    per_variable = np.sqrt((clipped**2).sum(axis=1))
    total = float(np.sqrt((norms**2).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (norms[None, :] * clipped).sum(axis=1) / (total * per_variable)
    cosine = np.where(per_variable > 0, cosine, 1.0)
    return ClipnormView(
        thresholds=grid,
        per_variable_norm=per_variable,
        global_norm=np.minimum(total, grid),
        per_variable_cosine=cosine,
        variables_clipped=(norms[None, :] > grid[:, None]).sum(axis=1),
    )


def ppo_surrogate(ratio: Tensor, advantage: Tensor, clip_range: float = 0.2) -> Tensor:
    r"""PPO's clipped surrogate per sample (to maximise):
    :math:`\min(r A,\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon) A)`.

    Where the clipped branch is the smaller one, the sample's gradient with respect to
    :math:`r` is zero: the ratio, not the gradient, is clipped. ``max_grad_norm`` in PPO
    code is a separate step, norm clipping of the whole gradient after ``backward()``.
    """
    clip_range = check_threshold(clip_range, "clip_range")
    if not isinstance(ratio, Tensor) or not isinstance(advantage, Tensor):
        raise TypeError("ratio and advantage must be Tensors")
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.minimum(ratio * advantage, clipped * advantage)


def ppo_toy() -> tuple[Tensor, Tensor, Tensor, nn.Linear, nn.Linear]:
    r"""Six states, their actions and advantages, an old policy (uniform) and a current one.

    The current policy has moved so that some ratios are past :math:`1 \pm 0.2` in the
    direction their advantage favours and some are not. Returns
    ``(states, actions, advantages, old_policy, policy)``.
    """
    states = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [2.0, 0.5]]
    )
    actions = torch.tensor([0, 1, 0, 1, 0, 1])
    advantages = torch.tensor([4.0, -2.0, 1.0, 6.0, -4.0, 2.0])
    old_policy, policy = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        old_policy.weight.zero_()
        old_policy.bias.zero_()
        policy.weight.copy_(torch.tensor([[0.6, -0.1], [-0.4, 0.3]]))
        policy.bias.zero_()
    return states, actions, advantages, old_policy, policy
