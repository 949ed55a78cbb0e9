r"""Spectral radius control and BPTT gradient-norm measurements.

Backpropagation through time sends the gradient :math:`k` steps back through the product
of state Jacobians :math:`J_T J_{T-1} \cdots J_{T-k+1}`. For a linear RNN every
:math:`J_t = W`, the product is :math:`W^k`, and Gelfand's formula
:math:`\lim_k \lVert W^k\rVert^{1/k} = \rho(W)` says its norm grows or shrinks like
:math:`\rho(W)^k` in the long run, where :math:`\rho(W) = \max_i |\lambda_i(W)|` is the
spectral radius. The largest singular value :math:`\sigma_{\max}(W) = \lVert W\rVert_2
\ge \rho(W)` bounds every step: :math:`\lVert W^k\rVert_2 \le \sigma_{\max}^k`.

Every measurement here returns norms indexed by **steps back** ``k = 0..T``: entry ``k``
belongs to the gradient that has travelled ``k`` steps from the loss at the last step.
For a linear RNN (time-invariant Jacobians) this is also :math:`\lVert\partial L/\partial
h_0\rVert` for a loss placed at step ``k``, so one measurement covers every sequence
length at once.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from clipping_lib._checks import check_int
from clipping_lib.lab.models import RNN
from clipping_lib.lab.threads import single_thread

STRUCTURES = ("gaussian", "orthogonal", "symmetric")
GATED_CELLS = ("lstm", "gru")


def _check_rho(rho: object) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"rho must be a real number, got {type(rho).__name__}")
    rho = float(rho)
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    return rho


def _check_square(W: object, name: str = "W") -> Tensor:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(W).__name__}")
    if W.ndim < 2 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"{name} must be a square matrix (..., n, n), got {tuple(W.shape)}")
    return W


def spectral_radius(W: Tensor) -> Tensor:
    r""":math:`\rho(W) = \max_i |\lambda_i(W)|`, computed in float64; batched over leading dims."""
    W = _check_square(W)
    return torch.linalg.eigvals(W.double()).abs().amax(dim=-1)


def largest_singular_value(W: Tensor) -> Tensor:
    r""":math:`\sigma_{\max}(W) = \lVert W\rVert_2 \ge \rho(W)` in float64 (equal for normal W)."""
    W = _check_square(W)
    return torch.linalg.matrix_norm(W.double(), ord=2)


def recurrent_matrix(
    size: int,
    rho: float,
    structure: str = "gaussian",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""A random ``size x size`` matrix whose spectral radius is exactly ``rho``.

    A base matrix :math:`A` is drawn and rescaled, :math:`W = \rho\, A / \rho(A)`, so the
    eigenvalues keep their shape and the largest modulus becomes ``rho`` (exact up to
    rounding in ``dtype``). ``structure`` picks :math:`A`:

    * ``"gaussian"``: i.i.d. normal entries. Non-normal: the eigenvalues fill a disk
      (circular law) and :math:`\sigma_{\max}(W)/\rho` tends to 2 as ``size`` grows
      (it is below 2 at finite size).
    * ``"orthogonal"``: a Haar-random orthogonal matrix; every eigenvalue lies on the
      circle of radius ``rho`` and :math:`\lVert W^k\rVert_2 = \rho^k` exactly.
    * ``"symmetric"``: :math:`(A + A^\top)/2`; real eigenvalues, normal, so
      :math:`\sigma_{\max}(W) = \rho(W)`.
    """
    size = check_int(size, "size", 1)
    rho = _check_rho(rho)
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(size, size, generator=generator, dtype=torch.float64)
    if structure == "orthogonal":
        q, r = torch.linalg.qr(base)
        base = q * torch.sgn(torch.diagonal(r))  # sign fix makes q Haar-distributed
    elif structure == "symmetric":
        base = (base + base.T) / 2
    return (base * (rho / spectral_radius(base))).to(dtype)


def power_norms(W: Tensor, steps: int) -> Tensor:
    r""":math:`\lVert W^k\rVert_2` for ``k = 0..steps``: shape ``(..., steps + 1)``.

    This is :math:`\lVert\partial h_T/\partial h_{T-k}\rVert_2` of the linear RNN with
    recurrent matrix ``W``. Batched over leading dimensions of ``W`` (e.g. one matrix per
    ``rho``); computed in float64 so large powers do not overflow.
    """
    W = _check_square(W).double()
    steps = check_int(steps, "steps", 0)
    return jacobian_product_norms(W.unsqueeze(-3).expand(*W.shape[:-2], steps, *W.shape[-2:]))


def jacobian_product_norms(jacobians: Tensor) -> Tensor:
    r""":math:`\lVert J_T J_{T-1} \cdots J_{T-k+1}\rVert_2` for ``k = 0..T``.

    ``jacobians`` is ``(..., T, n, n)`` with entry ``t - 1`` holding
    :math:`J_t = \partial h_t/\partial h_{t-1}` (as :meth:`RNN.state_jacobians` returns).
    Entry ``k`` of the result is :math:`\lVert\partial h_T/\partial h_{T-k}\rVert_2`, the
    largest factor by which any gradient at step ``T`` can grow on its way ``k`` steps
    back; entry 0 is 1. The ``T`` products are built right to left, then all their norms
    are taken in one batched call. Computed in float64.
    """
    jacobians = _check_square(jacobians, "jacobians")
    if jacobians.ndim < 3:
        raise ValueError(f"jacobians must be (..., T, n, n), got {tuple(jacobians.shape)}")
    jacobians = jacobians.double()
    steps, n = jacobians.shape[-3], jacobians.shape[-1]
    product = torch.eye(n, dtype=torch.float64).expand(*jacobians.shape[:-3], n, n)
    products = [product]
    with single_thread():
        for t in range(steps - 1, -1, -1):
            product = product @ jacobians[..., t, :, :]
            products.append(product)
        return torch.linalg.matrix_norm(torch.stack(products, dim=-3), ord=2)


def bptt_gradient_norms(
    model: RNN, x: Tensor, h0: Tensor | None = None, direction: Tensor | None = None
) -> Tensor:
    r""":math:`\lVert\partial L/\partial h_{T-k}\rVert` for ``k = 0..T`` by one backward pass.

    The loss is :math:`L = \sum_b v^\top h_T^{(b)}` for a unit vector ``direction``
    :math:`v` (default: all ones, normalised), so entry ``k`` of each row is the norm of a
    real autograd gradient :math:`(J_T \cdots J_{T-k+1})^\top v` after ``k`` steps back.
    Returns ``(batch, T + 1)``.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a clipping_lib.lab.models.RNN, got {type(model).__name__}")
    n = model.hidden_size
    if direction is None:
        direction = torch.full((n,), 1.0 / math.sqrt(n), dtype=model.W.dtype)
    elif not isinstance(direction, Tensor) or direction.shape != (n,):
        raise ValueError(f"direction must be a tensor of shape ({n},)")
    h0 = model.initial_state(x, h0).detach().clone().requires_grad_(True)
    with single_thread():
        states = model.unroll(x, h0)
        loss = (states[-1] * direction).sum()
        grads = torch.autograd.grad(loss, states)
    norms = torch.stack([torch.linalg.vector_norm(g, dim=-1) for g in grads], dim=-1)
    return norms.flip(-1).detach()


def fitted_growth_rate(norms: Tensor, start: int = 0, stop: int | None = None) -> float:
    r"""Least-squares slope of :math:`\log \lVert g_k\rVert` against ``k`` over ``[start, stop)``.

    For a linear RNN this estimates :math:`\log\rho(W)` per step: positive means growth,
    negative decay. ``norms`` is one row of measurements indexed by steps back.
    """
    if not isinstance(norms, Tensor) or norms.ndim != 1:
        raise ValueError("norms must be a 1-d tensor indexed by steps back")
    window = norms[start:stop].double()
    if window.numel() < 2:
        raise ValueError(f"the window [{start}, {stop}) holds fewer than 2 norms")
    if not bool(torch.all(torch.isfinite(window) & (window > 0))):
        raise ValueError("norms in the window must be finite and > 0 to take their log")
    k = torch.arange(window.numel(), dtype=torch.float64)
    k = k - k.mean()
    log_norm = window.log()
    return float((k * (log_norm - log_norm.mean())).sum() / (k * k).sum())


def gated_gradient_norms(
    cell: str,
    hidden_size: int,
    steps: int,
    *,
    input_size: int = 1,
    gate_bias: float = 0.0,
    input_scale: float = 1.0,
    batch: int = 1,
    seed: int = 0,
) -> Tensor:
    r"""BPTT gradient norms of an LSTM or GRU cell at PyTorch's default initialisation.

    The cell (``"lstm"`` or ``"gru"``) runs ``steps`` steps on Gaussian inputs times
    ``input_scale`` from a zero state; the loss is :math:`L = \sum_b v^\top h_T^{(b)}`
    with :math:`v` all ones, normalised. Entry ``k`` is the norm of :math:`\partial L /
    \partial s_{T-k}` where the state :math:`s_t` is :math:`(h_t, c_t)` for the LSTM and
    :math:`h_t` for the GRU. ``gate_bias`` is added to the bias of the gate that keeps
    the state: the forget gate of the LSTM, the update gate :math:`z` of the GRU
    (:math:`h_t = (1 - z) \odot n + z \odot h_{t-1}`). Returns ``(batch, steps + 1)``.
    """
    if cell not in GATED_CELLS:
        raise ValueError(f"cell must be one of {GATED_CELLS}, got {cell!r}")
    hidden_size = check_int(hidden_size, "hidden_size", 1)
    steps = check_int(steps, "steps", 0)
    input_size = check_int(input_size, "input_size", 1)
    batch = check_int(batch, "batch", 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = (
            nn.LSTMCell(input_size, hidden_size)
            if cell == "lstm"
            else nn.GRUCell(input_size, hidden_size)
        )
    with torch.no_grad():  # gates are stacked [i, f, g, o] (LSTM) and [r, z, n] (GRU)
        module.bias_ih[hidden_size : 2 * hidden_size] += gate_bias
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, batch, input_size, generator=generator) * input_scale
    h = torch.zeros(batch, hidden_size, requires_grad=True)
    c = torch.zeros(batch, hidden_size, requires_grad=True)
    states = [(h, c)]
    with single_thread():
        for t in range(steps):
            h, c = module(x[t], (h, c)) if cell == "lstm" else (module(x[t], h), c)
            states.append((h, c))
        direction = torch.full((hidden_size,), 1.0 / math.sqrt(hidden_size))
        loss = (h * direction).sum()
        flat = [s for pair in states for s in (pair if cell == "lstm" else pair[:1])]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    per_state = 2 if cell == "lstm" else 1
    squares = [
        sum(torch.linalg.vector_norm(g, dim=-1) ** 2 for g in grads[i : i + per_state])
        for i in range(0, len(grads), per_state)
    ]
    return torch.stack(squares, dim=-1).sqrt().flip(-1).detach()


def weight_gradient_terms(
    model: RNN, x: Tensor, h0: Tensor | None = None, direction: Tensor | None = None
) -> Tensor:
    r"""The per-step terms of :math:`\partial L/\partial W = \sum_t \delta_t h_{t-1}^\top`.

    For :math:`L = \sum_b v^\top h_T^{(b)}` (as in :func:`bptt_gradient_norms`), the state
    gradients run backwards, :math:`\partial L/\partial h_T = v` and
    :math:`\partial L/\partial h_{t-1} = J_t^\top\,\partial L/\partial h_t`, and step
    :math:`t` contributes
    :math:`\delta_t h_{t-1}^\top` with :math:`\delta_t = \varphi'(a_t) \odot
    \partial L/\partial h_t = D_t (J_T \cdots J_{t+1})^\top v`. Returns ``(T, n, n)``:
    entry ``t - 1`` is step ``t``'s term summed over the batch. Their sum is the full BPTT
    gradient; the last ``k`` alone are truncated BPTT (:func:`truncated_weight_gradient`).
    Computed explicitly (no autograd), in float64.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a clipping_lib.lab.models.RNN, got {type(model).__name__}")
    n = model.hidden_size
    if direction is None:
        direction = torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)
    elif not isinstance(direction, Tensor) or direction.shape != (n,):
        raise ValueError(f"direction must be a tensor of shape ({n},)")
    h0 = model.initial_state(x, h0)
    W = model.W.detach().double()
    with torch.no_grad(), single_thread():
        states = [s.double() for s in model.unroll(x, h0)]
        grad_h = direction.double().expand_as(states[-1])
        terms = []
        for t in range(len(states) - 1, 0, -1):
            slope = 1.0 - states[t] ** 2 if model.nonlinearity == "tanh" else 1.0
            delta = slope * grad_h  # dL/da_t
            terms.append(delta.T @ states[t - 1])
            grad_h = delta @ W  # dL/dh_{t-1} = W^T delta_t, for every row of the batch
    return torch.stack(terms[::-1])


def truncated_weight_gradient(
    model: RNN, x: Tensor, k: int, h0: Tensor | None = None, direction: Tensor | None = None
) -> Tensor:
    r"""Truncated BPTT: :math:`\partial L/\partial W` through the last ``k`` steps only.

    The sum of the last ``k`` terms of :func:`weight_gradient_terms`; it equals autograd's
    gradient when the state :math:`h_{T-k}` is detached. With :math:`|\varphi'| \le 1` and
    :math:`\lVert h\rVert \le \sqrt n` (tanh), its norm is at most
    :math:`\sqrt n\,\lVert v\rVert \sum_{j<k} \sigma_{\max}(W)^j` per sequence, whatever
    :math:`T` is.
    """
    k = check_int(k, "k")
    terms = weight_gradient_terms(model, x, h0, direction)
    return terms[-k:].sum(dim=0)


def settled_tanh_rnn(
    rho: float, hidden_size: int = 64, batch: int = 8, steps: int = 100, seed: int = 3
) -> tuple[RNN, Tensor, Tensor]:
    r"""A tanh RNN with a Gaussian :math:`W` of spectral radius ``rho``, run to a settled state.

    Returns ``(model, x, h0)``: ``x`` are ``steps`` inputs of scale 0.5 per sequence
    (``(batch, steps, 1)``, float64) and ``h0`` the state after 60 earlier steps from a
    random start, so measurements begin on the network's attractor, not its transient.
    """
    rho = _check_rho(rho)
    model = RNN(
        1, hidden_size, nonlinearity="tanh", bias=False, dtype=torch.float64,
        recurrent_matrix=recurrent_matrix(hidden_size, rho, "gaussian", dtype=torch.float64),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(batch, 60 + steps, 1, generator=generator, dtype=torch.float64)
    start = 0.5 * torch.randn(batch, hidden_size, generator=generator, dtype=torch.float64)
    with torch.no_grad(), single_thread():
        settled = model.unroll(x[:, :60], start)[-1]
    return model, x[:, 60:], settled
