r"""Adaptive clipping: thresholds that follow the training run instead of a fixed number.

Each method is a :class:`~clipping_lib.strategies.Clipper`: call it once per step with
the parameters after ``backward()``; it clips their gradients in place and returns a
:class:`~clipping_lib.strategies.ClipStep` (the global L2 norm before clipping, the
threshold in force, whether it clipped). No method syncs with the host: state and
decisions stay tensors (``torch.where`` and clamps instead of Python ``if``).

* :class:`AutoClip` (Seetharaman, Wichern, Pardo and Le Roux 2020): clip the global norm
  to the p-th percentile of all norms seen so far, this step's included.
* :class:`AGC`, adaptive gradient clipping (Brock, De, Smith and Simonyan 2021):
  unit-wise, each unit's gradient is clipped relative to the norm of its weights.
* :class:`ZClip` (Kumar, Owen, Roy Chowdhury and Güra 2025): exponential moving averages
  of the mean and variance of the norm; a norm whose z-score exceeds a threshold is
  clipped, the further out the harder.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from clipping_lib._checks import check_eps, check_int, check_positive
from clipping_lib.clip import get_total_norm
from clipping_lib.strategies import ClipStep

__all__ = ["AGC", "AutoClip", "ZClip", "unitwise_norm"]

_INF = float("inf")


def _grads(parameters: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def _scale_(grads: list[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-d tensor ``coef`` (no host sync)."""
    groups: dict[tuple, list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, dtype), group in groups.items():
        torch._foreach_mul_(group, coef.to(device, dtype))


class AutoClip:
    r"""Clip the global norm to the ``percentile``-th percentile of the norm history.

    At step :math:`t` with global norm :math:`n_t`, the threshold is
    :math:`c_t = \operatorname{percentile}_p(n_1, \dots, n_t)` (linear interpolation, as
    ``numpy.percentile`` in the authors' code), and the gradients are scaled by
    :math:`\min(1, c_t / (n_t + \varepsilon))`, as ``clip_grad_norm_``. The history keeps
    every step (the paper's choice; no window), including norms of clipped steps before
    clipping. With ``p = 100`` nothing is clipped beyond the ``eps`` shrink; the paper
    recommends ``p = 10``.
    """

    def __init__(self, percentile: float = 10.0, *, eps: float = 1e-6) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
            raise TypeError(f"percentile must be a real number, got {type(percentile).__name__}")
        if not 0 < percentile <= 100:  # also rejects NaN
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.eps = check_eps(eps)
        self._norms = torch.empty(0)
        self.steps = 0

    @property
    def history(self) -> Tensor:
        """The global norms seen so far, one per step (a 1-d tensor)."""
        return self._norms[: self.steps]

    @torch.no_grad()
    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        grads = _grads(parameters)
        norm = get_total_norm(grads)
        if self.steps == len(self._norms):  # grow the buffer by doubling
            grown = torch.empty(max(16, 2 * self.steps), dtype=norm.dtype, device=norm.device)
            grown[: self.steps] = self._norms
            self._norms = grown
        self._norms[self.steps] = norm
        self.steps += 1
        threshold = torch.quantile(self.history, self.percentile / 100.0)
        if grads:
            _scale_(grads, torch.clamp(threshold / (norm + self.eps), max=1.0))
        return ClipStep(norm, threshold, norm > threshold)

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile:g})"


def unitwise_norm(tensor: Tensor) -> Tensor:
    r"""The L2 norm of each unit of ``tensor``, shaped to broadcast against it.

    Units follow PyTorch's weight layouts: a tensor with 2 or more dimensions has one unit
    per index of dim 0, which is a row of a ``Linear`` weight ``(out, in)``, an output
    channel of a ``Conv`` weight ``(out, in/groups, *kernel)`` or a row of an
    ``Embedding``. A tensor with 0 or 1 dimensions (biases, norm gains) is one unit.
    ``ConvTranspose`` weights are laid out ``(in, out/groups, *kernel)``, so for them the
    units are input channels.
    """
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True)


class AGC:
    r"""Adaptive gradient clipping, unit-wise (Brock et al. 2021, NFNets).

    For each unit :math:`i` of each parameter :math:`W` with gradient :math:`G`:

    .. math::  G_i \leftarrow \begin{cases} \lambda \dfrac{\lVert W_i\rVert^\star}
        {\lVert G_i\rVert} G_i & \text{if } \dfrac{\lVert G_i\rVert}{\lVert W_i\rVert^\star}
        > \lambda \\ G_i & \text{otherwise,}\end{cases}
        \qquad \lVert W_i\rVert^\star = \max(\lVert W_i\rVert, \varepsilon)

    with units as in :func:`unitwise_norm`. ``eps`` (the paper's 1e-3) keeps zero-initialised
    weights from having their gradients clipped to zero; it must be > 0. As in the
    authors' code, :math:`\lVert G_i\rVert` in the denominator is floored at 1e-6. The
    paper does not clip the final classifier layer: pass only the parameters to clip.

    There is no single global threshold, so the returned ``threshold`` is ``inf``;
    ``clipped`` is true when any unit was clipped, and :attr:`clipped_fraction` holds the
    fraction of units clipped at the last call (a 0-d tensor).
    """

    def __init__(self, clipping: float = 0.01, *, eps: float = 1e-3) -> None:
        self.clipping = check_positive(clipping, "clipping")
        self.eps = check_positive(eps, "eps")
        self.clipped_fraction = torch.tensor(0.0)

    @torch.no_grad()
    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        params = [p for p in parameters if p.grad is not None]
        norm = get_total_norm([p.grad for p in params])
        units, clipped_units = 0, torch.tensor(0)
        for p in params:
            max_norm = unitwise_norm(p).clamp(min=self.eps) * self.clipping
            grad_norm = unitwise_norm(p.grad)
            trigger = grad_norm > max_norm
            p.grad.mul_(torch.where(trigger, max_norm / grad_norm.clamp(min=1e-6), 1.0))
            units += trigger.numel()
            clipped_units = clipped_units + trigger.sum()
        self.clipped_fraction = clipped_units / max(units, 1)
        return ClipStep(norm, torch.tensor(_INF), clipped_units > 0)

    def __repr__(self) -> str:
        return f"AGC(clipping={self.clipping:g}, eps={self.eps:g})"


class ZClip:
    r"""Z-score clipping of the global norm with EMA statistics (Kumar et al. 2025).

    **Warm-up** (the first ``warmup_steps`` calls): nothing is clipped; the norms are
    collected, and at the end :math:`\mu` and :math:`\sigma^2` are their mean and
    (population) variance.

    **Then**, for the norm :math:`g_t`: :math:`z_t = (g_t - \mu)/(\sigma + \varepsilon)`.
    If :math:`z_t > z_{thr}`, the gradients are clipped to the norm

    .. math::  g_t^\star = \mu + \frac{z_{thr}}{z_t / z_{thr}}\,\sigma
                         = \mu + \frac{z_{thr}^2}{z_t}\,\sigma

    (the paper's reciprocal, "adaptive scaling" rule: the larger the spike, the lower it
    lands), else :math:`g_t^\star = g_t`. Then the statistics move towards
    :math:`g_t^\star`, the *clipped* norm, so a spike does not inflate them:
    :math:`\mu \leftarrow \alpha\mu + (1-\alpha) g_t^\star`, then
    :math:`\sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(g_t^\star - \mu)^2` with the
    updated :math:`\mu`, as in the authors' code. A clipped step scales the gradients by
    :math:`g_t^\star/(g_t + 10^{-6})`; any other step leaves them untouched.

    Choices among the variants of the authors' code: the z-score mode with adaptive
    scaling (not "percentile" or "clip to the mean"), no fixed max-norm clipping on top
    and none during warm-up, statistics updated on every step.

    The returned ``threshold`` is the norm above which ZClip clips,
    :math:`\mu + z_{thr}(\sigma + \varepsilon)` (``inf`` during warm-up), so
    ``clipped == total_norm > threshold``; a clipped gradient lands below it, at
    :math:`g_t^\star`.
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        *,
        warmup_steps: int = 25,
        eps: float = 1e-6,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.z_thresh = check_positive(z_thresh, "z_thresh")
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", 1)
        self.eps = check_eps(eps)
        self.steps = 0
        self._warmup: list[Tensor] = []
        self.mean = torch.tensor(math.nan)
        self.var = torch.tensor(math.nan)

    @torch.no_grad()
    def __call__(self, parameters: Iterable[Tensor]) -> ClipStep:
        grads = _grads(parameters)
        norm = get_total_norm(grads)
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self._warmup.append(norm)
            if self.steps == self.warmup_steps:
                warmup = torch.stack(self._warmup)
                self.mean, self.var = warmup.mean(), warmup.var(correction=0)
                self._warmup = []
            return ClipStep(norm, torch.tensor(_INF), torch.tensor(False))
        std = self.var.sqrt()
        z = (norm - self.mean) / (std + self.eps)
        clipped = z > self.z_thresh
        target = torch.where(clipped, self.mean + self.z_thresh**2 / z * std, norm)
        if grads:
            _scale_(grads, torch.where(clipped, target / (norm + 1e-6), 1.0))
        threshold = self.mean + self.z_thresh * (std + self.eps)
        self.mean = self.alpha * self.mean + (1 - self.alpha) * target
        self.var = self.alpha * self.var + (1 - self.alpha) * (target - self.mean) ** 2
        return ClipStep(norm, threshold, clipped)

    def __repr__(self) -> str:
        return f"ZClip(alpha={self.alpha:g}, z_thresh={self.z_thresh:g})"
