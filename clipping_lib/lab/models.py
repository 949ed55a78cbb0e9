r"""Recurrent networks with an explicit recurrent matrix, for studying BPTT gradients.

One model, :class:`RNN`, covers the cases the course needs:

.. math::

    a_t = W h_{t-1} + U x_t + b, \qquad h_t = \varphi(a_t), \qquad y_t = V h_t + c,

with :math:`\varphi` the identity (``"linear"``) or :math:`\tanh` (``"tanh"``). Unlike
``torch.nn.RNN``, the recurrent matrix is one plain parameter ``W`` that you can read,
set to a matrix with a chosen spectral radius (see :mod:`clipping_lib.lab.spectral`) and
differentiate through. A single-unit network is ``hidden_size=1``.

Backpropagation through time multiplies the state Jacobians

.. math::

    \frac{\partial h_t}{\partial h_{t-1}} = \operatorname{diag}(\varphi'(a_t))\, W,

which :meth:`RNN.state_jacobians` returns for a whole sequence at once.

Shapes are batch first: inputs ``x`` are ``(batch, steps, input_size)``, states are
``(batch, hidden_size)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clipping_lib._checks import check_int

NONLINEARITIES = ("linear", "tanh")


class RNN(nn.Module):
    r"""An Elman RNN :math:`h_t = \varphi(W h_{t-1} + U x_t + b)` with an optional readout.

    Args:
        input_size: size of each input vector :math:`x_t`.
        hidden_size: size of the state :math:`h_t`.
        nonlinearity: ``"tanh"`` or ``"linear"`` (the identity).
        output_size: if given, a linear readout :math:`y_t = V h_t + c` of this size;
            otherwise :meth:`forward` returns the states themselves.
        bias: whether the recurrence has a bias :math:`b` (initialised to zero).
        recurrent_matrix: the initial ``W``, shape ``(hidden_size, hidden_size)``; by
            default Gaussian with variance ``1 / hidden_size`` (spectral radius close to 1
            for large ``hidden_size``, by the circular law).
        seed: seed of the generator that draws the initial weights.
        dtype: floating dtype of every parameter (float64 keeps gradient norms from
            overflowing or underflowing over long sequences).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: str = "tanh",
        output_size: int | None = None,
        bias: bool = True,
        recurrent_matrix: Tensor | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        generator = torch.Generator().manual_seed(seed)
        n = self.hidden_size
        if recurrent_matrix is None:
            recurrent_matrix = torch.randn(n, n, generator=generator, dtype=torch.float64)
            recurrent_matrix = recurrent_matrix / math.sqrt(n)
        elif not isinstance(recurrent_matrix, Tensor):
            raise TypeError(
                f"recurrent_matrix must be a Tensor, got {type(recurrent_matrix).__name__}"
            )
        elif recurrent_matrix.shape != (n, n):
            raise ValueError(
                f"recurrent_matrix must have shape ({n}, {n}), got {tuple(recurrent_matrix.shape)}"
            )
        self.W = nn.Parameter(recurrent_matrix.detach().to(dtype, copy=True))
        input_matrix = torch.randn(n, self.input_size, generator=generator, dtype=torch.float64)
        self.U = nn.Parameter((input_matrix / math.sqrt(self.input_size)).to(dtype))
        self.b = nn.Parameter(torch.zeros(n, dtype=dtype)) if bias else None
        self.readout: nn.Linear | None = None
        if output_size is not None:
            output_size = check_int(output_size, "output_size")
            self.readout = nn.Linear(n, output_size, dtype=dtype)
            with torch.no_grad():
                self.readout.weight.copy_(
                    torch.randn(output_size, n, generator=generator, dtype=torch.float64)
                    / math.sqrt(n)
                )
                self.readout.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"nonlinearity={self.nonlinearity!r}, bias={self.b is not None}"
        )

    def step(self, h: Tensor, x_t: Tensor) -> Tensor:
        r"""One step: :math:`h_t = \varphi(W h_{t-1} + U x_t + b)` for a batch of states."""
        a = h @ self.W.T + x_t @ self.U.T
        if self.b is not None:
            a = a + self.b
        return torch.tanh(a) if self.nonlinearity == "tanh" else a

    def initial_state(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        """Check ``x`` (``(batch, steps, input_size)``) and return ``h0`` (zeros if None)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"x must have shape (batch, steps, {self.input_size}), got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        if h0 is None:
            return x.new_zeros(batch, self.hidden_size)
        if not isinstance(h0, Tensor):
            raise TypeError(f"h0 must be a Tensor, got {type(h0).__name__}")
        if h0.shape != (batch, self.hidden_size):
            raise ValueError(
                f"h0 must have shape ({batch}, {self.hidden_size}), got {tuple(h0.shape)}"
            )
        return h0

    def unroll(self, x: Tensor, h0: Tensor | None = None) -> list[Tensor]:
        r"""The states ``[h_0, h_1, ..., h_T]``, each ``(batch, hidden_size)``.

        They are the nodes of the autograd graph, so ``torch.autograd.grad(loss, states)``
        gives :math:`\partial L / \partial h_t` for every ``t`` in one backward pass.
        ``h0`` defaults to zeros.
        """
        h = self.initial_state(x, h0)
        states = [h]
        for t in range(x.shape[1]):
            h = self.step(h, x[:, t])
            states.append(h)
        return states

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the sequence: ``(outputs, h_T)`` like ``torch.nn.RNN(batch_first=True)``.

        ``outputs`` is ``(batch, steps, output_size)`` with a readout, else the states
        ``h_1..h_T`` as ``(batch, steps, hidden_size)``.
        """
        states = self.unroll(x, h0)
        hidden = torch.stack(states[1:], dim=1)
        outputs = self.readout(hidden) if self.readout is not None else hidden
        return outputs, states[-1]

    def state_jacobians(self, states: list[Tensor] | Tensor) -> Tensor:
        r"""The state Jacobians :math:`J_t = \partial h_t/\partial h_{t-1}`, stacked.

        :math:`J_t = \operatorname{diag}(\varphi'(a_t))\, W`.

        ``states`` are :math:`h_0, \dots, h_T` as returned by :meth:`unroll` (a list, or a
        tensor ``(batch, T + 1, hidden_size)``). Returns ``(batch, T, n, n)``, where entry
        ``t - 1`` is :math:`J_t`. For tanh, :math:`\varphi'(a_t) = 1 - h_t^2`.
        """
        if isinstance(states, list | tuple):
            states = torch.stack(list(states), dim=1)
        if not isinstance(states, Tensor) or states.ndim != 3:
            raise ValueError("states must be the list from unroll or a (batch, T + 1, n) tensor")
        W = self.W.detach()
        after = states.detach()[:, 1:]
        if self.nonlinearity == "linear":
            return W.expand(*after.shape[:2], *W.shape).clone()
        slope = 1.0 - after**2
        return slope.unsqueeze(-1) * W


class TiedLM(nn.Module):
    r"""A tiny language model whose input embedding and output layer share one matrix.

    ``logits = E\,\tanh(M\,E[\text{token}] + m)``: ``head.weight`` *is* ``embed.weight``
    (weight tying), so autograd adds both uses into one ``.grad`` and
    ``model.parameters()`` yields that tensor once. Listing the modules' parameters by
    hand yields it twice, which is notebook 04's point.
    """

    def __init__(self, vocabulary: int = 50, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(check_int(vocabulary, "vocabulary"), check_int(width, "width"))
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.embed.weight  # tied: one tensor, two uses

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def tied_lm_with_grads(seed: int = 0) -> TiedLM:
    """A seeded :class:`TiedLM` after one next-token cross-entropy backward on 64 tokens."""
    torch.manual_seed(seed)
    model = TiedLM()
    tokens = torch.randint(0, 50, (64,))
    nn.functional.cross_entropy(model(tokens), torch.roll(tokens, 1)).backward()
    return model
