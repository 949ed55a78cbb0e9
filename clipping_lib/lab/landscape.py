r"""The "cliff" of Pascanu, Mikolov and Bengio (2013), Fig. 6: a one-unit RNN and its loss.

The model has two parameters, a recurrent weight :math:`w` and a bias :math:`b`:

.. math::  x_t = w\,\sigma(x_{t-1}) + b, \quad x_0 = 0.5, \quad t = 1..50, \qquad
           L(w, b) = (\sigma(x_{50}) - 0.7)^2.

For :math:`w > 4` the map :math:`x \mapsto w\sigma(x) + b` can have two stable fixed points,
and which one :math:`x_{50}` ends near depends on which side of the unstable one
:math:`x_0` starts: crossing that boundary in :math:`(w, b)` flips :math:`\sigma(x_{50})`
from near 0 to near 1. The loss surface has a **cliff** there, where the gradient is
orders of magnitude larger than anywhere else.

The gradient is computed in *forward mode*: alongside :math:`x_t` the recurrence carries
:math:`\partial x_t/\partial w = \sigma(x_{t-1}) + w\sigma'(x_{t-1})\,\partial x_{t-1}/\partial w`
and :math:`\partial x_t/\partial b = 1 + w\sigma'(x_{t-1})\,\partial x_{t-1}/\partial b`.
The same code runs on tensors (a whole grid of :math:`(w, b)` in one program:
:func:`loss_surface`) and on Python floats (a descent path, one point at a time, where
tensor overheads would dominate: :func:`descent_path`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_threshold
from clipping_lib.clip import clip_by_norm, clip_by_value
from clipping_lib.lab.threads import single_thread

STEPS = 50
X0 = 0.5
TARGET = 0.7
METHODS = ("none", "norm", "value")

Number = float | Tensor


def _sigmoid_float(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _loss_and_gradient(
    w: Number, b: Number, steps: int, x0: float, target: float, sigmoid: Callable
) -> tuple[Number, Number, Number]:
    """Loss, dL/dw, dL/db by forward-mode differentiation (floats or broadcast tensors)."""
    x = x0 + 0.0 * (w + b)  # the shape of w and b broadcast together
    dx_dw = dx_db = 0.0 * x
    for _ in range(steps):
        s = sigmoid(x)
        gain = w * s * (1.0 - s)  # the Jacobian dx_t/dx_{t-1}
        dx_dw, dx_db = s + gain * dx_dw, 1.0 + gain * dx_db
        x = w * s + b
    s = sigmoid(x)
    error = s - target
    dl_dx = 2.0 * error * s * (1.0 - s)
    return error * error, dl_dx * dx_dw, dl_dx * dx_db


def final_state(w: Tensor, b: Tensor, *, steps: int = STEPS, x0: float = X0) -> Tensor:
    """:math:`x_T` for every ``(w, b)`` (tensors broadcast together)."""
    steps = check_int(steps, "steps")
    x = torch.full(torch.broadcast_shapes(w.shape, b.shape), x0, dtype=w.dtype)
    for _ in range(steps):
        x = w * torch.sigmoid(x) + b
    return x


@dataclass(frozen=True)
class Surface:
    """Loss and gradient on a grid: arrays are ``(len(b_values), len(w_values))`` (b is rows)."""

    w_values: Tensor
    b_values: Tensor
    loss: Tensor
    grad_w: Tensor
    grad_b: Tensor

    @property
    def grad_norm(self) -> Tensor:
        return torch.hypot(self.grad_w, self.grad_b)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(w_min, w_max, b_min, b_max)``, for ``imshow(..., extent=...)``."""
        w, b = self.w_values, self.b_values
        return (w[0].item(), w[-1].item(), b[0].item(), b[-1].item())


@single_thread()
def loss_surface(
    w_values: Tensor,
    b_values: Tensor,
    *,
    steps: int = STEPS,
    x0: float = X0,
    target: float = TARGET,
) -> Surface:
    """Loss and gradient at every grid point, in one vectorised float64 program."""
    for name, values in (("w_values", w_values), ("b_values", b_values)):
        if not isinstance(values, Tensor) or values.ndim != 1 or len(values) < 2:
            raise ValueError(f"{name} must be a 1-d tensor of at least 2 values")
    steps = check_int(steps, "steps")
    w = w_values.double()[None, :]
    b = b_values.double()[:, None]
    loss, grad_w, grad_b = _loss_and_gradient(w, b, steps, x0, target, torch.sigmoid)
    return Surface(w_values.double(), b_values.double(), loss, grad_w, grad_b)


def loss_and_gradient(
    w: float, b: float, *, steps: int = STEPS, x0: float = X0, target: float = TARGET
) -> tuple[float, float, float]:
    """``(L, dL/dw, dL/db)`` at one point, in Python floats (fast for one point at a time)."""
    return _loss_and_gradient(
        float(w), float(b), check_int(steps, "steps"), x0, target, _sigmoid_float
    )


@single_thread()
def slope_and_curvature(w: float, b_values: Tensor, *, steps: int = STEPS) -> tuple[Tensor, Tensor]:
    r""":math:`\partial L/\partial b` and :math:`\partial^2 L/\partial b^2` at fixed ``w``.

    Exact derivatives by autograd (double backward), vectorised over ``b_values``.
    """
    b = b_values.double().clone().requires_grad_()
    loss = (
        torch.sigmoid(final_state(torch.tensor(float(w), dtype=torch.float64), b, steps=steps))
        - TARGET
    ) ** 2
    (slope,) = torch.autograd.grad(loss.sum(), b, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), b)
    return slope.detach(), curvature


@dataclass(frozen=True)
class DescentPath:
    """Gradient descent from one start: ``points`` is ``(n + 1, 2)`` rows of ``(w, b)``."""

    points: np.ndarray
    loss: np.ndarray  # (n + 1,) the loss at each point
    grad_norm: np.ndarray  # (n,) the gradient norm before clipping at each step
    step_length: np.ndarray  # (n,) the distance moved by each step

    @property
    def largest_step(self) -> float:
        return float(self.step_length.max()) if len(self.step_length) else 0.0


def descent_path(
    w0: float,
    b0: float,
    *,
    lr: float,
    steps: int,
    method: Literal["none", "norm", "value"] = "none",
    threshold: float | None = None,
) -> DescentPath:
    r"""Plain gradient descent on :math:`L(w, b)`: :math:`\theta \leftarrow \theta - \eta\,\hat g`.

    ``method`` clips the gradient first: ``"norm"`` with :func:`clip_by_norm` (exact, so
    every step is at most :math:`\eta c` long), ``"value"`` with :func:`clip_by_value`
    (each coordinate at most :math:`\eta c`, so a step at most :math:`\sqrt2\,\eta c`).
    Stops early if the loss or gradient stops being finite.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    steps = check_int(steps, "steps")
    if method != "none":
        if threshold is None:
            raise ValueError(f"method {method!r} needs a threshold")
        threshold = check_threshold(threshold, "threshold")
    clip = {"norm": clip_by_norm, "value": clip_by_value}.get(method)
    w, b = float(w0), float(b0)
    loss, grad_w, grad_b = loss_and_gradient(w, b)
    points, losses, norms, lengths = [(w, b)], [loss], [], []
    for _ in range(steps):
        norm = math.hypot(grad_w, grad_b)
        if not math.isfinite(norm):
            break
        # Clip with the library's function when clipping changes something (a gradient
        # inside the ball or box comes back unchanged, so skipping it saves a tensor round trip).
        size = norm if method == "norm" else max(abs(grad_w), abs(grad_b))
        if clip is not None and size > threshold:
            grad_w, grad_b = clip(
                torch.tensor([grad_w, grad_b], dtype=torch.float64), threshold
            ).tolist()
        w, b = w - lr * grad_w, b - lr * grad_b
        norms.append(norm)
        lengths.append(lr * math.hypot(grad_w, grad_b))
        loss, grad_w, grad_b = loss_and_gradient(w, b)
        points.append((w, b))
        losses.append(loss)
    return DescentPath(np.array(points), np.array(losses), np.array(norms), np.array(lengths))


def fixed_point_slope(w: float, *, x0: float = X0) -> float:
    r"""The slope :math:`\lambda = w\,\sigma'(x_0)` of the map :math:`x \mapsto w\sigma(x) + b`
    at :math:`x_0`.

    On the edge of the cliff, :math:`b = x_0 - w\sigma(x_0)` (:func:`edge_bias`) makes
    :math:`x_0` a fixed point; for :math:`\lambda > 1` it is unstable and the trajectory
    lingers there before it leaves. With :math:`x_0 = 0.5`,
    :math:`\sigma'(0.5) = 0.2350`, so :math:`\lambda \approx 0.235\,w` (not the sigmoid's
    steepest slope :math:`w/4`, which it has at 0).
    """
    s = _sigmoid_float(x0)
    return float(w) * s * (1.0 - s)


def edge_bias(w: float, *, x0: float = X0) -> float:
    r"""The bias :math:`b = x_0 - w\sigma(x_0)` that makes :math:`x_0` a fixed point: the edge."""
    return x0 - float(w) * _sigmoid_float(x0)


def predicted_wall_width(w: float, *, steps: int = STEPS, x0: float = X0) -> float:
    r"""The wall's width in :math:`b`, to a factor of order 1: :math:`(\lambda-1)\lambda^{-T}`.

    A change :math:`\delta b` moves :math:`x_T` by :math:`\delta b \sum_{k<T}\lambda^k
    \approx \delta b\,\lambda^T/(\lambda - 1)` near the unstable fixed point, and the wall
    is crossed once that reaches order 1. Valid for :math:`\lambda = w\sigma'(x_0) > 1`.
    """
    slope = fixed_point_slope(w, x0=x0)
    if slope <= 1.0:
        raise ValueError(f"the fixed point is stable for w = {w} (slope {slope:.3f} <= 1)")
    return (slope - 1.0) * slope ** -check_int(steps, "steps")


@single_thread()
def gradient_and_hessian_norms(
    w: Tensor, b: Tensor, *, steps: int = STEPS
) -> tuple[Tensor, Tensor]:
    r""":math:`\lVert\nabla L\rVert` and :math:`\lVert\nabla^2 L\rVert_2` at every point ``(w, b)``.

    ``w`` and ``b`` broadcast together; exact derivatives by autograd (double backward,
    float64). The 2 x 2 Hessian is symmetric, so its spectral norm is its largest
    eigenvalue in modulus.
    """
    # One independent (w, b) per point, so that summing the losses keeps derivatives apart.
    w, b = (v.double().detach().clone().requires_grad_() for v in torch.broadcast_tensors(w, b))
    loss = (torch.sigmoid(final_state(w, b, steps=steps)) - TARGET) ** 2
    grad_w, grad_b = torch.autograd.grad(loss.sum(), (w, b), create_graph=True)
    h_ww, h_wb = torch.autograd.grad(grad_w.sum(), (w, b), retain_graph=True)
    h_bw, h_bb = torch.autograd.grad(grad_b.sum(), (w, b))
    hessian = torch.stack(
        [torch.stack([h_ww, h_wb], dim=-1), torch.stack([h_bw, h_bb], dim=-1)], dim=-2
    )
    hessian = 0.5 * (hessian + hessian.transpose(-1, -2))  # symmetric up to rounding
    hessian_norm = torch.linalg.eigvalsh(hessian).abs().amax(dim=-1)
    return torch.hypot(grad_w, grad_b).detach(), hessian_norm


def wall_crossing(
    w: float, *, points: int = 300, decades: tuple[float, float] = (-3.0, 2.0)
) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(b, grad_norm, hessian_norm)`` on a line of :math:`b` across the wall at ``w``.

    The offsets from :func:`edge_bias` are ``points`` log-spaced multiples of the
    :func:`predicted_wall_width` :math:`\delta`, from :math:`10^{d_0}\delta` to
    :math:`10^{d_1}\delta` (``decades``), on both sides, so the wall is resolved however
    thin it is (while :math:`\delta` is above float64's spacing of :math:`b`).
    """
    points = check_int(points, "points", 2)
    low, high = decades
    if not low < high:
        raise ValueError(f"decades must be (low, high) with low < high, got {decades!r}")
    width = predicted_wall_width(w)
    offsets = torch.logspace(low, high, points, dtype=torch.float64) * width
    b = edge_bias(w) + torch.cat([-offsets.flip(0), offsets])
    w_tensor = torch.tensor(float(w), dtype=torch.float64)
    grad_norm, hessian_norm = gradient_and_hessian_norms(w_tensor, b)
    return b, grad_norm, hessian_norm
