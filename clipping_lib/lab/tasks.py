r"""Synthetic long-range tasks, generated in code from a seed (nothing is downloaded).

Both tasks hide the answer in two time steps far apart, so a recurrent network must carry
information across the whole sequence, and backpropagation through time multiplies many
Jacobians: the setting where gradients explode (Hochreiter and Schmidhuber 1997; Pascanu,
Mikolov and Bengio 2013).

* **Adding problem** (regression). Each step carries a value :math:`u_t \sim U(0, 1)` and a
  marker :math:`m_t \in \{0, 1\}`; exactly two steps are marked, one in the first half and
  one in the second. The target is :math:`y = \sum_t m_t u_t`. A model that ignores the
  markers can still answer the sum of the two half-means of the values; its mean squared
  error, :func:`adding_baseline_mse` (:math:`(1 - 2/T)/6` for even :math:`T`), is the
  trivial baseline: only a loss below it shows that a model uses the markers. (Always
  answering the mean, 1, scores :data:`ADDING_BASELINE_MSE` :math:`= 1/6`, an easier bar.)
* **Temporal order** (4-way classification). Each step is a one-hot symbol; two relevant
  symbols, each ``X`` or ``Y``, sit at a random step in ``[T/10, 2T/10)`` and in
  ``[5T/10, 6T/10)``; every other step is one of four distractors. The class is the ordered
  pair: ``XX, XY, YX, YY`` -> ``0, 1, 2, 3``. Chance level is a cross-entropy of
  :math:`\ln 4`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from clipping_lib._checks import check_int

ADDING_BASELINE_MSE = 1.0 / 6.0  # MSE of always answering the mean sum, 1 (not the best
# marker-free answer: see adding_baseline_mse)
TEMPORAL_ORDER_CHANCE_CE = math.log(4.0)  # cross-entropy of a uniform guess over 4 classes

# Temporal-order alphabet: the two relevant symbols first, then the distractors.
TEMPORAL_ORDER_SYMBOLS = ("X", "Y", "a", "b", "c", "d")


@dataclass(frozen=True)
class SequenceTask:
    """A fixed, seeded data set of sequences.

    ``inputs`` has shape ``(n, length, input_size)``; ``targets`` is ``(n, 1)`` floats for a
    regression (``loss == "mse"``) and ``(n,)`` class indices for a classification
    (``loss == "cross_entropy"``).
    """

    name: str
    inputs: Tensor
    targets: Tensor
    loss: Literal["mse", "cross_entropy"]
    output_size: int

    @property
    def n(self) -> int:
        return self.inputs.shape[0]

    @property
    def length(self) -> int:
        return self.inputs.shape[1]

    @property
    def input_size(self) -> int:
        return self.inputs.shape[2]

    def batch(self, index: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """Mini-batch number ``index``, cycling through the data in a fixed order."""
        n_batches = self.n // batch_size
        if n_batches < 1:
            raise ValueError(f"batch_size must be <= n = {self.n}, got {batch_size}")
        start = (index % n_batches) * batch_size
        return self.inputs[start : start + batch_size], self.targets[start : start + batch_size]


def adding_problem(n: int, length: int, *, seed: int = 0) -> SequenceTask:
    """``n`` adding-problem sequences of ``length`` steps (inputs: value, marker)."""
    n = check_int(n, "n")
    length = check_int(length, "length", minimum=2)
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values * markers).sum(dim=1, keepdim=True)
    inputs = torch.stack([values, markers], dim=2)
    return SequenceTask("adding", inputs, targets, "mse", output_size=1)


def adding_baseline_mse(length: int) -> float:
    r"""The adding problem's trivial baseline: the least mean squared error of a predictor
    that ignores the markers, for sequences of ``length`` steps.

    The first marker sits uniformly on one of the :math:`k_1 = \lfloor T/2 \rfloor` steps
    of the first half, the second on one of the :math:`k_2 = T - k_1` steps of the second,
    independently of the values. Given the values alone, the best prediction (in squared
    error) is :math:`\mathbb{E}[y \mid u] = \bar u_{(1)} + \bar u_{(2)}`, the sum of the
    two half-means. Its error is :math:`(u_a - \bar u_{(1)}) + (u_b - \bar u_{(2)})`, two
    independent terms of mean 0; for a half of :math:`k` i.i.d. :math:`U(0, 1)` values and a
    uniformly chosen one of them, :math:`\mathbb{E}[(u_a - \bar u)^2] = \frac{k - 1}{k}
    \cdot \frac{1}{12}` (the expected variance of :math:`k` values with divisor :math:`k`).
    So the baseline is

    .. math::  \frac{1}{12}\Big(2 - \frac{1}{k_1} - \frac{1}{k_2}\Big)
               = \frac{1}{6}\Big(1 - \frac{2}{T}\Big) \text{ for even } T,

    :math:`2/15 \approx 0.133` at :math:`T = 10` and :math:`0.158` at :math:`T = 40`, below
    the :math:`1/6` of always answering 1 (the tests check it by Monte Carlo).
    """
    length = check_int(length, "length", minimum=2)
    first_half = length // 2
    return (2.0 - 1.0 / first_half - 1.0 / (length - first_half)) / 12.0


def temporal_order(n: int, length: int, *, seed: int = 0) -> SequenceTask:
    """``n`` temporal-order sequences of ``length`` one-hot symbols; 4 classes."""
    n = check_int(n, "n")
    length = check_int(length, "length", minimum=10)
    generator = torch.Generator().manual_seed(seed)
    n_symbols = len(TEMPORAL_ORDER_SYMBOLS)
    symbols = torch.randint(2, n_symbols, (n, length), generator=generator)  # distractors
    window = length // 10
    first = torch.randint(window, 2 * window, (n,), generator=generator)
    second = torch.randint(5 * window, 6 * window, (n,), generator=generator)
    first_symbol = torch.randint(0, 2, (n,), generator=generator)
    second_symbol = torch.randint(0, 2, (n,), generator=generator)
    rows = torch.arange(n)
    symbols[rows, first] = first_symbol
    symbols[rows, second] = second_symbol
    inputs = torch.nn.functional.one_hot(symbols, n_symbols).float()
    targets = 2 * first_symbol + second_symbol
    return SequenceTask("temporal_order", inputs, targets, "cross_entropy", output_size=4)


TASKS = {"adding": adding_problem, "temporal_order": temporal_order}


def make_task(name: str, n: int, length: int, *, seed: int = 0) -> SequenceTask:
    """Build a task by name: ``"adding"`` or ``"temporal_order"``."""
    if name not in TASKS:
        raise ValueError(f"name must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](n, length, seed=seed)
