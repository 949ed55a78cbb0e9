r"""Clipped SGD under gradient noise: the bias of clipping, and heavy tails.

The test problem is the 1-D quadratic :math:`f(x) = x^2/2`, minimised at :math:`x = 0`,
with stochastic gradients :math:`g = x + \xi` for zero-mean noise :math:`\xi`. Clipped SGD
steps :math:`x \leftarrow x - \eta\,\mathrm{clip}_c(x + \xi)` with
:math:`\mathrm{clip}_c(g) = \max(-c, \min(c, g))` (in one dimension norm and value
clipping coincide).

Clipping is not linear, so :math:`\mathbb{E}[\mathrm{clip}_c(x + \xi)] \ne
\mathrm{clip}_c(x)` in general: for small steps clipped SGD settles where the *expected
clipped* gradient vanishes (:func:`clipping_fixed_point`), not where the gradient does.
For noise symmetric about 0 that point is still :math:`x = 0`; for skewed noise it is
not, and the offset grows as :math:`c` shrinks: the stochastic bias of clipping that
Koloskova, Hendrikx and Stich (ICML 2023) show no step size removes.

Noises (all with mean 0, float64):

* ``"gaussian"``: standard normal: symmetric, light tails;
* ``"exponential"``: :math:`E - 1` with :math:`E \sim \mathrm{Exp}(1)`: variance 1,
  skewed to the right (a long tail of large positive gradients);
* ``"pareto"``: a random sign times :math:`U^{-1/\alpha} - 1` with :math:`\alpha = 1.5`:
  symmetric, heavy tails (finite mean, infinite variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_positive
from clipping_lib.lab.threads import single_thread

NOISES = ("gaussian", "exponential", "pareto")
PARETO_ALPHA = 1.5
_QUANTILE_POINTS = 100_001


def _check_noise(kind: object) -> str:
    if kind not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    return kind


def _from_uniform(kind: str, u: Tensor, sign: Tensor) -> Tensor:
    """Noise values from uniforms ``u`` in (0, 1) (and signs, for the symmetric heavy tail)."""
    if kind == "gaussian":
        return torch.special.ndtri(u)
    if kind == "exponential":
        return -torch.log1p(-u) - 1.0
    return sign * (u.pow(-1.0 / PARETO_ALPHA) - 1.0)


def sample_noise(kind: str, shape: tuple[int, ...], *, seed: int = 0) -> Tensor:
    """``shape`` independent draws of the named noise, float64, from a seeded generator."""
    kind = _check_noise(kind)
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    u = u.clamp(min=torch.finfo(torch.float64).tiny)  # keep u^(-1/alpha) finite
    sign = torch.randint(0, 2, shape, generator=generator).double() * 2 - 1
    return _from_uniform(kind, u, sign)


@lru_cache(maxsize=len(NOISES))
def _quantiles(kind: str) -> Tensor:
    """Equal-weight quantiles of the noise (midpoints), a deterministic stand-in for it.

    Cached: callers must not modify the returned tensor."""
    u = (torch.arange(_QUANTILE_POINTS, dtype=torch.float64) + 0.5) / _QUANTILE_POINTS
    if kind != "pareto":
        return _from_uniform(kind, u, torch.ones_like(u))
    tail = _from_uniform(kind, u, torch.ones_like(u))
    return torch.cat([tail, -tail])  # symmetric: each magnitude with both signs


def expected_clipped_gradient(x: Tensor, threshold: float, kind: str) -> Tensor:
    r""":math:`\mathbb{E}_\xi[\mathrm{clip}_c(x + \xi)]` at each ``x``, by quadrature.

    The expectation is an average over :data:`_QUANTILE_POINTS` equally spaced quantiles
    of the noise (deterministic; the error is below about c / 1e5). ``threshold=math.inf`` gives
    the unclipped mean gradient, :math:`x` (up to the quadrature error).
    """
    kind = _check_noise(kind)
    if not (isinstance(threshold, int | float) and threshold > 0):  # NaN fails too
        raise ValueError(
            f"threshold must be a number > 0 (math.inf: no clipping), got {threshold!r}"
        )
    noise = _quantiles(kind)
    x = torch.as_tensor(x, dtype=torch.float64)
    flat = x.reshape(-1, 1)
    return (flat + noise).clamp(-threshold, threshold).mean(dim=1).reshape(x.shape)


def clipping_fixed_point(
    threshold: Tensor | float, kind: str, *, tolerance: float = 1e-10
) -> Tensor:
    r"""The point :math:`x_c` where :math:`\mathbb{E}[\mathrm{clip}_c(x + \xi)] = 0`, per threshold.

    Small-step clipped SGD on :math:`x^2/2` settles there; :math:`x_c = 0` means no bias.
    The expected clipped gradient :math:`F(x)` increases with :math:`x` (its slope is
    :math:`P(|x + \xi| < c)`), so a safeguarded Newton iteration finds the root: Newton
    steps inside a shrinking bracket, bisection when a step would leave it. For all
    thresholds (a float or a 1-d tensor) at once; returns a tensor of their shape.
    """
    kind = _check_noise(kind)
    tolerance = check_positive(tolerance, "tolerance")
    c = torch.as_tensor(threshold, dtype=torch.float64)
    if c.ndim > 1 or bool(torch.any(~torch.isfinite(c) | (c <= 0))):
        raise ValueError("threshold must be a finite number > 0 or a 1-d tensor of them")
    c = c.reshape(-1, 1)
    noise = _quantiles(kind)[None, :]
    low = torch.full_like(c, -10.0) - c  # F(low) < 0 < F(high)
    high = torch.full_like(c, 10.0) + c
    x = torch.zeros_like(c)
    for _ in range(200):
        shifted = x + noise
        value = shifted.clamp(-c, c).mean(dim=1, keepdim=True)
        slope = (shifted.abs() < c).double().mean(dim=1, keepdim=True)
        low = torch.where(value < 0, x, low)
        high = torch.where(value > 0, x, high)
        newton = x - value / slope.clamp(min=1e-300)
        inside = (newton > low) & (newton < high) & (slope > 0)
        step = torch.where(inside, newton, 0.5 * (low + high))
        done = (value.abs() < tolerance * 1e-2) | ((high - low) < tolerance)
        x = torch.where(done, x, step)
        if bool(done.all()):
            break
    return x.reshape(torch.as_tensor(threshold).shape)


@dataclass(frozen=True)
class SGDRun:
    """Clipped SGD on :math:`x^2/2`, many chains: shapes are ``threshold.shape + (chains,)``."""

    final: Tensor  # the last iterate of each chain
    tail_mean: Tensor  # the average iterate over the second half of the steps
    tail_max: Tensor  # the largest |x| over the second half of the steps


@single_thread()  # 1000s of tiny sequential steps: one thread is fastest
def clipped_sgd(noise: Tensor, *, lr: float, threshold: Tensor | float, x0: float = 0.0) -> SGDRun:
    r"""Run :math:`x \leftarrow x - \eta\,\mathrm{clip}_c(x + \xi_k)` with the given noise.

    ``noise`` is ``(steps, chains)``: one draw per step and chain. ``threshold`` is a
    float or a tensor of thresholds (``math.inf``: plain SGD); every threshold runs on the
    same noise. Returns the final iterate, the mean iterate over the second half of the
    run (the estimate of where the chain settles) and the largest :math:`|x|` there.
    """
    if not isinstance(noise, Tensor) or noise.ndim != 2:
        raise ValueError("noise must be a (steps, chains) tensor")
    lr = check_positive(lr, "lr")
    if lr >= 2.0:
        raise ValueError(f"lr must be < 2 (plain GD on x^2/2 diverges beyond), got {lr}")
    c = torch.as_tensor(threshold, dtype=torch.float64)
    if bool(torch.any(torch.isnan(c) | (c < 0))):
        raise ValueError("threshold must be >= 0 (math.inf for no clipping)")
    steps, chains = noise.shape
    check_int(steps, "steps", 2)
    c = c[..., None]  # broadcast over chains
    x = torch.full((*c.shape[:-1], chains), float(x0), dtype=torch.float64)
    total = torch.zeros_like(x)
    largest = torch.zeros_like(x)
    start = steps // 2
    noise = noise.double()
    for k in range(steps):
        gradient = x + noise[k]
        x = x - lr * torch.minimum(torch.maximum(gradient, -c), c)
        if k >= start:
            total += x
            largest = torch.maximum(largest, x.abs())
    return SGDRun(x, total / (steps - start), largest)


def noise_tail_ratio(values: Tensor, quantile: float = 0.999) -> float:
    """How heavy a tail is: the ``quantile`` of ``|values|`` over their median (Gaussian: ~5)."""
    magnitude = values.double().abs().reshape(-1)
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0.5, 1), got {quantile}")
    return float(torch.quantile(magnitude, quantile) / magnitude.median())
