r"""The small regression problem and the training loops that notebook 03 runs.

Notebook 03 puts ``clip_grad_norm_`` in the right and the wrong places of a training
loop. What every section shares lives here, so the lesson keeps only the lines that
teach:

* :data:`X`, :data:`Y`: 256 examples of a linear map of 10 inputs plus a little noise.
  The first input is scaled by 10, so the mean squared error
  :math:`\frac1n\lVert X_b\theta - Y\rVert^2` (:math:`X_b` = inputs with a column of ones
  for the bias) has Hessian :math:`H = \frac2n X_b^\top X_b` with one large eigenvalue,
  about 190: plain SGD on a linear model diverges for learning rates above
  :math:`2/\lambda_{\max}`.
* :func:`make_model` (a small MLP), :func:`loss_of`, :func:`grads`, :func:`flat`.
* :func:`quadratic_geometry`: :math:`H`'s eigenvalues, its steepest direction, the
  least-squares minimum and its loss, in float64.
* :func:`clipped_linear_run`: SGD on the linear model with ``clip_and_step``, recording
  the loss, whether each step was clipped, and the offset from the minimum along the
  steepest direction; an optional schedule changes the learning rate and the threshold
  per step.
* :func:`sorted_micro_batches`: the data split into micro-batches that disagree;
  :func:`per_step_weights`: what clipping every micro-batch does to each micro-batch's
  share of the accumulated gradient.
* :func:`fused_hook_step`: one float16 autocast step under a ``GradScaler`` with the
  step pre-hook of :func:`clipping_lib.recipes.register_clip_pre_hook`, returning the
  norm the hook measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from clipping_lib.clip import get_total_norm
from clipping_lib.recipes import clip_and_step, register_clip_pre_hook

__all__ = [
    "X",
    "Y",
    "clipped_linear_run",
    "flat",
    "fused_hook_step",
    "grads",
    "loss_of",
    "make_model",
    "per_step_weights",
    "quadratic_geometry",
    "regression_data",
    "sorted_micro_batches",
]


def regression_data(seed: int = 0, n: int = 256) -> tuple[Tensor, Tensor]:
    """``(X, Y)``: ``n`` inputs of 10 features (the first scaled by 10) and noisy targets."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    x[:, 0] *= 10  # one large input feature makes one direction of the loss very steep
    w_true = torch.randn(10, 1, generator=generator)
    return x, x @ w_true + 0.1 * torch.randn(n, 1, generator=generator)


X, Y = regression_data()


def make_model(seed: int = 1) -> torch.nn.Sequential:
    """A small MLP, 10 -> 16 (tanh) -> 1: four parameter tensors (two weights, two biases)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def loss_of(model: torch.nn.Module, x: Tensor = X, y: Tensor = Y) -> Tensor:
    """The mean squared error of ``model`` on ``(x, y)`` (the whole data set by default)."""
    return F.mse_loss(model(x), y)


def grads(model: torch.nn.Module) -> list[Tensor | None]:
    """The ``.grad`` of every parameter of ``model``, in order."""
    return [p.grad for p in model.parameters()]


def flat(tensors: Iterable[Tensor]) -> Tensor:
    """The tensors, detached, flattened and concatenated into one vector."""
    return torch.cat([t.detach().flatten() for t in tensors])


def quadratic_geometry(x: Tensor = X, y: Tensor = Y) -> dict[str, Tensor | float]:
    r"""The linear model's loss surface, exactly, in float64.

    With :math:`X_b = [x, 1]` the MSE is a quadratic with Hessian
    :math:`H = \frac2n X_b^\top X_b`. Returns ``curvatures`` (the eigenvalues of
    :math:`H`, ascending), ``steep`` (the unit eigenvector of the largest one, in the
    order (weights, bias) of ``torch.nn.Linear``'s parameters), ``best`` (the
    least-squares :math:`\theta^\star`) and ``best_loss`` (its MSE).
    """
    inputs = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    curvatures, directions = torch.linalg.eigh(2 * inputs.T @ inputs / len(x))
    best = torch.linalg.lstsq(inputs, y.double()).solution.flatten()
    best_loss = F.mse_loss(inputs @ best, y.double().flatten()).item()
    return {"curvatures": curvatures, "steep": directions[:, -1], "best": best,
            "best_loss": best_loss}  # fmt: skip


def clipped_linear_run(
    lr: float,
    max_norm: float,
    steps: int = 400,
    schedule: Callable[[int], tuple[float, float]] | None = None,
) -> dict[str, list[float]]:
    r"""Clipped SGD (``clip_and_step``) on ``torch.nn.Linear(10, 1)`` (seed 1), full batch.

    ``schedule(k) -> (lr, max_norm)``, if given, sets both for step ``k`` (from 0).
    Returns, per step, the ``loss`` before the step, whether the step was ``clipped``
    (pre-clip norm above the threshold) and ``steep``: :math:`(\theta - \theta^\star)
    \cdot v_{\max}`, the offset from the minimum along the steepest direction.
    """
    if schedule is None:
        def schedule(_: int) -> tuple[float, float]:
            return lr, max_norm
    geometry = quadratic_geometry()
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    record: dict[str, list] = {"loss": [], "clipped": [], "steep": []}
    for step in range(steps):
        step_lr, step_max_norm = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        norm = clip_and_step(optimizer, model.parameters(), step_max_norm)
        record["loss"].append(loss.item())
        record["clipped"].append(norm.item() > step_max_norm)
        theta = flat(model.parameters()).double()  # (weights, bias), as in quadratic_geometry
        record["steep"].append(((theta - geometry["best"]) @ geometry["steep"]).item())
    return record


def sorted_micro_batches(k: int = 4, x: Tensor = X, y: Tensor = Y) -> list[tuple[Tensor, Tensor]]:
    """The data in ``k`` equal micro-batches, sorted by the first feature so that they disagree."""
    if not isinstance(k, int) or k < 1 or len(x) % k:
        raise ValueError(f"k must be a positive divisor of {len(x)}, got {k!r}")
    order = x[:, 0].argsort()
    size = len(x) // k
    return [(x[order][i : i + size], y[order][i : i + size]) for i in range(0, len(x), size)]


def per_step_weights(coefficients: Sequence[float]) -> list[float]:
    r"""Each micro-batch's weight in a gradient clipped after every micro-batch.

    Clip ``j`` multiplies everything accumulated so far by :math:`\alpha_j`, so
    micro-batch ``j``'s contribution ends multiplied by :math:`\prod_{i \ge j}\alpha_i`.
    Returned relative to the last micro-batch's (which sees one clip).
    """
    if not coefficients:
        raise ValueError("coefficients must hold at least one clipping factor")
    return [math.prod(coefficients[j:]) / coefficients[-1] for j in range(len(coefficients))]


Install = Callable[[torch.optim.Optimizer, list[Tensor]], RemovableHandle]


def fused_hook_step(
    fused: bool,
    install: Install | None = None,
    *,
    unscale_first: bool = False,
    max_norm: float = 1.0,
    scale: float = 1024.0,
) -> dict[str, float]:
    r"""One float16 autocast step of :func:`make_model` with a clip pre-hook and a GradScaler.

    ``torch.optim.SGD(..., lr=0.1, fused=fused)``, a clipping step pre-hook installed by
    ``install(optimizer, norms)`` (which must append the norm it measures to ``norms``;
    by default :func:`clipping_lib.recipes.register_clip_pre_hook` with ``max_norm``),
    and ``GradScaler("cpu", init_scale=scale)``; ``unscale_first`` calls
    ``scaler.unscale_(optimizer)`` before ``scaler.step``. Returns the norm the hook
    ``measured``, the ``true`` float32 gradient norm, the ``update`` length and the
    loss ``scale``. A fused optimizer under a GradScaler unscales inside its own kernel,
    so unless ``unscale_`` ran first its pre-hooks see :math:`s\,g`.
    """
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
    measured: list[Tensor] = []
    if install is None:
        handle = register_clip_pre_hook(optimizer, max_norm, norms=measured)
    else:
        handle = install(optimizer, measured)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    with torch.autocast(device_type="cpu", dtype=torch.float16):
        loss = loss_of(model)
    scaler.scale(loss).backward()
    before = flat(model.parameters())
    if unscale_first:
        scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    handle.remove()
    reference = make_model()
    loss_of(reference).backward()
    return {
        "measured": measured[0].item() if measured else math.nan,
        "true": get_total_norm(grads(reference)).item(),
        "update": (flat(model.parameters()) - before).norm().item(),
        "scale": scale,
    }
