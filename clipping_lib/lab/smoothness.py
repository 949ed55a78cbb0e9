r"""(L0, L1)-smoothness, measured, and the one-dimensional demos of why clipping works.

Zhang, He, Sra and Jadbabaie (ICLR 2020) call a twice-differentiable :math:`f`
**(L0, L1)-smooth** if

.. math::  \lVert\nabla^2 f(x)\rVert \le L_0 + L_1 \lVert\nabla f(x)\rVert \quad\text{for all } x.

With :math:`L_1 = 0` this is ordinary :math:`L`-smoothness. They observed that along the
training trajectory of real networks the local smoothness varies by orders of magnitude
and grows with the gradient norm, so no single :math:`L` describes the run, while
:math:`L_0 + L_1\lVert g\rVert` does; under this condition clipped gradient descent
needs a number of steps that does not depend on the largest gradient norm, while
fixed-step gradient descent does.

Here:

* :func:`trajectory_smoothness`: the local smoothness of a recorded run, estimated by the
  gradient difference over each step, :math:`\lVert g_{k+1} - g_k\rVert /
  \lVert\theta_{k+1} - \theta_k\rVert`, next to :math:`\lVert g_k\rVert`;
* :func:`fit_l0_l1`: the line :math:`L_0 + L_1\lVert g\rVert` fitted on log-log axes;
* :func:`smoothness_along_training`: clipped full-batch runs of a small tanh RNN on the
  adding problem (one per seed, trained together), each with its local smoothness per
  step, the fit, and the log-log slope with the correlation of the logs, so the spread
  over seeds can be shown;
* :func:`quartic` and :func:`descent_1d`: :math:`f(x) = x^4`, which is (16, 1)-smooth but
  not :math:`L`-smooth, and plain or clipped gradient descent on a 1-D function.

Everything is computed in float64 (Python floats in :func:`descent_1d`), so the results do
not depend on the CPU's kernels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_positive, check_threshold
from clipping_lib.lab.models import RNN
from clipping_lib.lab.spectral import recurrent_matrix
from clipping_lib.lab.tasks import adding_problem
from clipping_lib.lab.threads import single_thread

QUARTIC_L0_L1 = (16.0, 1.0)  # 12 x^2 <= 16 + 4 |x|^3, with equality at |x| = 2


def trajectory_smoothness(params: Tensor, grads: Tensor) -> tuple[Tensor, Tensor]:
    r"""Local smoothness along a run and the gradient norm where it was measured.

    ``params`` and ``grads`` are ``(steps + 1, d)``: row ``k`` holds the flattened
    parameters :math:`\theta_k` and the gradient :math:`g_k = \nabla f(\theta_k)`. Returns
    ``(grad_norm, smoothness)``, both ``(steps,)``, with

    .. math::  \hat L_k = \frac{\lVert g_{k+1} - g_k\rVert}{\lVert\theta_{k+1} - \theta_k\rVert},

    a lower estimate of :math:`\sup\lVert\nabla^2 f\rVert` on the segment from
    :math:`\theta_k` to :math:`\theta_{k+1}`, and :math:`\lVert g_k\rVert`. Steps that did
    not move (zero length) give NaN.
    """
    for name, value in (("params", params), ("grads", grads)):
        if not isinstance(value, Tensor) or value.ndim != 2 or value.shape[0] < 2:
            raise ValueError(f"{name} must be a (steps + 1, d) tensor with steps >= 1")
    if params.shape != grads.shape:
        raise ValueError(f"params {tuple(params.shape)} and grads {tuple(grads.shape)} differ")
    params, grads = params.double(), grads.double()
    step = torch.linalg.vector_norm(params.diff(dim=0), dim=1)
    change = torch.linalg.vector_norm(grads.diff(dim=0), dim=1)
    smoothness = torch.where(step > 0, change / step, torch.full_like(step, math.nan))
    return torch.linalg.vector_norm(grads[:-1], dim=1), smoothness


@dataclass(frozen=True)
class SmoothnessFit:
    r"""The fitted :math:`L(g) = L_0 + L_1 g` and its scatter around the data."""

    L0: float
    L1: float
    rms_log10_error: float  # root mean square of log10(data / fit): 0.3 is a factor of 2

    def predict(self, grad_norm: Tensor) -> Tensor:
        """:math:`L_0 + L_1 \\lVert g\\rVert` at each gradient norm."""
        return self.L0 + self.L1 * grad_norm.double()


def fit_l0_l1(grad_norm: Tensor, smoothness: Tensor, *, grid: int = 4001) -> SmoothnessFit:
    r"""Fit :math:`\hat L \approx L_0 + L_1 \lVert g\rVert` by least squares in log space.

    Minimises :math:`\sum_k \big(\log(L_0 + L_1 g_k) - \log\hat L_k\big)^2` over
    :math:`L_0, L_1 \ge 0`, the distance one sees on log-log axes. Writing the line as
    :math:`L_0 (1 + g / g_\star)` with the crossover norm :math:`g_\star = L_0 / L_1`, the
    best :math:`\log L_0` for a given :math:`g_\star` is a mean, so only :math:`g_\star`
    is searched: on a log grid of ``grid`` values spanning the data (and the two limits
    :math:`L_1 = 0` and :math:`L_0 = 0`). Entries that are not finite and positive are
    ignored.
    """
    if not isinstance(grad_norm, Tensor) or not isinstance(smoothness, Tensor):
        raise TypeError("grad_norm and smoothness must be tensors")
    if grad_norm.shape != smoothness.shape or grad_norm.ndim != 1:
        raise ValueError("grad_norm and smoothness must be 1-d tensors of the same length")
    grid = check_int(grid, "grid", 2)
    g, L = grad_norm.double(), smoothness.double()
    keep = torch.isfinite(g) & torch.isfinite(L) & (g > 0) & (L > 0)
    if int(keep.sum()) < 2:
        raise ValueError("need at least 2 points with finite, positive norm and smoothness")
    log_g, log_L = g[keep].log(), L[keep].log()
    log_crossover = torch.linspace(
        float(log_g.min()) - 5.0, float(log_g.max()) + 5.0, grid, dtype=torch.float64
    )
    # log(1 + g/g*) for every candidate g* (rows) and point (columns), computed stably;
    # for each row the best log L0 is the mean of log L - log(1 + g/g*).
    residual = log_L[None, :] - torch.nn.functional.softplus(
        log_g[None, :] - log_crossover[:, None]
    )
    log_L0 = residual.mean(dim=1)
    errors = ((residual - log_L0[:, None]) ** 2).mean(dim=1)
    i = int(errors.argmin())
    L0 = math.exp(float(log_L0[i]))
    fits = [(float(errors[i]), L0, L0 / math.exp(float(log_crossover[i])))]
    # The two limits: a constant L (L1 = 0) and pure proportionality (L0 = 0).
    fits.append((float(((log_L - log_L.mean()) ** 2).mean()), math.exp(float(log_L.mean())), 0.0))
    ratio = log_L - log_g
    fits.append((float(((ratio - ratio.mean()) ** 2).mean()), 0.0, math.exp(float(ratio.mean()))))
    best = min(fits, key=lambda fit: fit[0])
    error, L0, L1 = best
    return SmoothnessFit(L0, L1, math.sqrt(error) / math.log(10.0))


@dataclass(frozen=True)
class TrainingSmoothness:
    r"""The local smoothness along one training run, and how it depends on the gradient.

    ``grad_norm`` and ``smoothness`` are :func:`trajectory_smoothness`'s, per step;
    ``loss`` the training loss before each step; ``fit`` the :func:`fit_l0_l1` line;
    ``slope`` the least-squares slope of :math:`\log\hat L` on :math:`\log\lVert g\rVert`
    (1 where :math:`\hat L \propto \lVert g\rVert`, 0 for a constant :math:`L`);
    ``correlation`` the correlation of the two logs; ``constant_error`` the scatter
    (root mean square, in decades) of :math:`\log_{10}\hat L` around its mean, the error of
    the best constant :math:`L`, to compare with ``fit.rms_log10_error``.
    """

    seed: int
    grad_norm: Tensor
    smoothness: Tensor
    loss: list[float]
    fit: SmoothnessFit
    slope: float
    correlation: float
    constant_error: float


def smoothness_along_training(
    seeds: Sequence[int] = (0,),
    *,
    hidden: int = 16,
    rho: float = 1.5,
    length: int = 30,
    examples: int = 128,
    steps: int = 200,
    lr: float = 0.1,
    threshold: float = 1.0,
) -> list[TrainingSmoothness]:
    r"""Train one tanh RNN per seed by clipped full-batch GD; the smoothness at each step.

    Each model is :class:`~clipping_lib.lab.models.RNN` (``hidden`` units, float64, the
    recurrent matrix Gaussian with spectral radius ``rho``, a linear readout) and learns
    the adding problem (``examples`` fixed sequences of ``length``) by
    :math:`\theta \leftarrow \theta - \eta\min(1, c/\lVert g\rVert)\,g` for ``steps``
    steps (:math:`\eta` = ``lr``, :math:`c` = ``threshold``, each model clipped with its
    own norm); ``seed`` draws the data, the weights and the recurrent matrix. Full batch,
    so that the change of the gradient over a step is the landscape's, not noise. All
    seeds train together, their parameters stacked along a leading axis (one batched
    program; the models never interact: the summed loss has block-separate gradients).
    """
    seeds = [check_int(seed, "seeds[...]", 0) for seed in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    steps = check_int(steps, "steps", 2)
    lr, threshold = check_positive(lr, "lr"), check_threshold(threshold, "threshold")
    tasks = [adding_problem(examples, length, seed=seed) for seed in seeds]
    inputs = torch.stack([task.inputs for task in tasks]).double()  # (S, N, T, 2)
    targets = torch.stack([task.targets[:, 0] for task in tasks]).double()  # (S, N)
    nets = [
        RNN(2, hidden, output_size=1, dtype=torch.float64, seed=seed,
            recurrent_matrix=recurrent_matrix(hidden, rho, "gaussian", seed=seed,
                                              dtype=torch.float64))
        for seed in seeds
    ]  # fmt: skip
    # W (S, n, n), U (S, n, 2), b (S, n), V (S, 1, n), c (S, 1): the order of RNN.parameters()
    params = [torch.stack([p.detach() for p in group]).requires_grad_()
              for group in zip(*(net.parameters() for net in nets), strict=True)]  # fmt: skip
    W, U, b, V, c = params
    thetas, grads, losses = [], [], []
    with single_thread():
        for _ in range(steps + 1):
            h = inputs.new_zeros(len(seeds), examples, hidden)
            for t in range(length):
                h = torch.tanh(h @ W.transpose(1, 2) + inputs[:, :, t] @ U.transpose(1, 2)
                               + b[:, None, :])  # fmt: skip
            outputs = (h @ V.transpose(1, 2))[..., 0] + c
            loss = ((outputs - targets) ** 2).mean(dim=1)  # (S,): one loss per model
            gradients = torch.autograd.grad(loss.sum(), params)
            thetas.append(torch.cat([p.detach().flatten(1) for p in params], dim=1))
            grads.append(torch.cat([g.flatten(1) for g in gradients], dim=1))
            losses.append(loss.detach())
            factor = lr * (threshold / grads[-1].norm(dim=1)).clamp(max=1.0)  # (S,)
            with torch.no_grad():
                for p, g in zip(params, gradients, strict=True):
                    p -= factor.view(-1, *[1] * (p.ndim - 1)) * g
    thetas, grads, losses = torch.stack(thetas, 1), torch.stack(grads, 1), torch.stack(losses, 1)
    runs = []
    for index, seed in enumerate(seeds):
        grad_norm, smoothness = trajectory_smoothness(thetas[index], grads[index])
        logs = torch.stack([grad_norm.log10(), smoothness.log10()])
        centred = logs - logs.mean(dim=1, keepdim=True)
        runs.append(TrainingSmoothness(
            seed=seed,
            grad_norm=grad_norm,
            smoothness=smoothness,
            loss=losses[index].tolist(),
            fit=fit_l0_l1(grad_norm, smoothness),
            slope=float((centred[0] @ centred[1]) / (centred[0] @ centred[0])),
            correlation=float(torch.corrcoef(logs)[0, 1]),
            constant_error=float(logs[1].std(correction=0)),
        ))  # fmt: skip
    return runs


def quartic(x: float) -> tuple[float, float, float]:
    r""":math:`f(x) = x^4`: value, gradient :math:`4x^3` and curvature :math:`12x^2`.

    Not :math:`L`-smooth (the curvature is unbounded), but (16, 1)-smooth:
    :math:`12x^2 \le 16 + 4|x|^3` for every :math:`x` (:data:`QUARTIC_L0_L1`).
    """
    x = float(x)
    square = x * x  # products, not powers: they overflow to inf instead of raising
    return square * square, 4.0 * square * x, 12.0 * square


def descent_1d(
    gradient: Callable[[float], float],
    x0: float,
    *,
    lr: float,
    steps: int,
    threshold: float | None = None,
) -> np.ndarray:
    r"""Gradient descent on a 1-D function, optionally clipped: the iterates ``x_0..x_n``.

    :math:`x_{k+1} = x_k - \eta\,\mathrm{clip}_c(f'(x_k))`, where
    :math:`\mathrm{clip}_c(g) = g \min(1, c/|g|)` (no clipping when ``threshold`` is None),
    so a clipped step is never longer than :math:`\eta c`. Stops at the first iterate
    that is not finite (it is included), so a divergent run is shorter than
    ``steps + 1`` and ends in inf or NaN. Python floats (IEEE float64) throughout.
    """
    if not callable(gradient):
        raise TypeError("gradient must be a callable float -> float")
    if isinstance(x0, bool) or not isinstance(x0, numbers.Real) or not math.isfinite(x0):
        raise ValueError(f"x0 must be a finite number, got {x0!r}")
    lr = check_positive(lr, "lr")
    steps = check_int(steps, "steps", 0)
    if threshold is not None:
        threshold = check_threshold(threshold, "threshold")
    x = float(x0)
    iterates = [x]
    for _ in range(steps):
        g = float(gradient(x))
        if threshold is not None and abs(g) > threshold:
            g = math.copysign(threshold, g)
        x = x - lr * g
        iterates.append(x)
        if not math.isfinite(x):
            break
    return np.array(iterates)
