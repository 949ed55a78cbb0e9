r"""Exercises of notebook 05 (training RNNs with and without clipping): checks that diagnose.

* ``ex1``: ``order_runs(order_task)``, two runs on the temporal-order task with
  ``train_many`` at :math:`\eta = 3` for 200 steps, unclipped and norm-clipped at
  :math:`c = 0.1` (the question that follows, NaN or not, usable or not, is open).
* ``ex2``: ``working_thresholds(lr, thresholds, band=(0.01, 0.3))``, the thresholds whose
  worst-case step :math:`\eta c` lies in the band that learned on the map.
* ``ex3``: ``marker_free_baseline(length)``, the adding problem's trivial baseline at
  length :math:`T`: :math:`(1 - 2/T)/6` for even :math:`T` (the lab's
  :func:`~clipping_lib.lab.tasks.adding_baseline_mse`).
* ``ex4``: ``around_largest_norm(grad_norm, loss, window=25)``, the step of a run's largest
  gradient norm and its mean loss over the ``window`` steps before and after it.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.tasks import adding_baseline_mse, temporal_order
from clipping_lib.lab.training import BatchedHistory, train_many

__all__ = ["ex1", "ex2", "ex3", "ex4"]


# --- Exercise 1 · Divergence without NaN ---------------------------------------------------


def order_runs(order_task) -> BatchedHistory:
    return train_many(order_task, [3.0, 3.0], ["none", "norm"], [math.inf, 0.1], steps=200)


@functools.cache
def _order_task():
    return temporal_order(4096, 20, seed=0)


@functools.cache
def _order_reference() -> BatchedHistory:
    return order_runs(_order_task())


_RESULTS: dict[Any, Any] = {}  # the last answer's result: each check reads it, one run


def _result(answer) -> Any:
    if answer is order_runs:
        return _order_reference()
    if answer not in _RESULTS:
        _RESULTS.clear()
        _RESULTS[answer] = answer(_order_task())
    return _RESULTS[answer]


def _two_runs(answer, reference) -> str | None:
    got = _result(answer)
    if not isinstance(got, BatchedHistory):
        return f"return what train_many returns (a BatchedHistory), not a {type(got).__name__}."
    if len(got.methods) != 2:
        return f"train two runs in one train_many call, got {len(got.methods)}."
    if sorted(got.methods) != ["none", "norm"]:
        return f"one run without clipping and one with norm clipping, got {list(got.methods)}."
    if not np.allclose(got.learning_rates, 3.0):
        return f"both runs use η = 3, got learning rates {got.learning_rates.tolist()}."
    clipped = got.methods.index("norm")
    if not math.isclose(float(got.thresholds[clipped]), 0.1, rel_tol=1e-6):
        return f"clip at c = 0.1, got c = {float(got.thresholds[clipped]):g}."
    if got.loss.shape[1] != 200:
        return f"train for 200 steps, got {got.loss.shape[1]}."
    return None


def _same_runs(answer, reference) -> str | None:
    got, expected = _result(answer), _order_reference()
    for method in ("none", "norm"):
        mine = got.final_loss[got.methods.index(method)]
        ours = expected.final_loss[expected.methods.index(method)]
        if not math.isclose(mine, ours, rel_tol=1e-3):
            return (
                f"the {method!r} run ends at {mine:.3f}, the reference at {ours:.3f}: use "
                "order_task as given, with train_many's default model (hidden_size=32, seed 0) "
                "and batch size (32)."
            )
    return None


ex1 = Exercise(
    "Exercise 1 · Divergence without NaN",
    order_runs,
    [_two_runs, _same_runs],
    verified="two runs at η = 3 for 200 steps, unclipped and norm-clipped at c = 0.1, "
    "ending where the reference runs end",
    hints=[
        "train_many takes one learning rate, method and threshold per run: two lists of two.",
        "train_many(order_task, [3.0, 3.0], ['none', 'norm'], [math.inf, 0.1], steps=200)",
    ],
)


# --- Exercise 2 · A threshold for η = 3 ----------------------------------------------------


def working_thresholds(
    lr: float, thresholds: list[float], band: tuple[float, float] = (0.01, 0.3)
) -> list[float]:
    low, high = band

    def inside(step: float) -> bool:  # the edges compared with a tolerance: 3 * 0.1 > 0.3
        return low < step < high or math.isclose(step, low) or math.isclose(step, high)

    return [c for c in thresholds if inside(lr * c)]


_MAP_THRESHOLDS = [0.03, 0.1, 0.3, 1.0, 3.0]


def _in_band(answer, reference) -> str | None:
    for lr in (3.0, 0.1, 10.0):
        got, expected = answer(lr, list(_MAP_THRESHOLDS)), reference(lr, _MAP_THRESHOLDS)
        if not isinstance(got, (list, tuple, np.ndarray)):
            return f"return a list of thresholds, not a {type(got).__name__}."
        got = [float(c) for c in got]
        if got == expected:
            continue
        plain_c = [c for c in _MAP_THRESHOLDS if 0.01 <= c <= 0.3]
        if got == plain_c and plain_c != expected:
            return (
                f"at η = {lr:g} you kept the c in the band, not the ηc: the band bounds the "
                "step, η times c."
            )
        strict = [c for c in _MAP_THRESHOLDS if 0.01 <= lr * c <= 0.3]
        if got == strict:
            edge = [c for c in expected if c not in got]
            return (
                f"at η = {lr:g} you dropped c = {edge[0]:g}: in floating point {lr:g} × "
                f"{edge[0]:g} = {lr * edge[0]!r}, just outside the band. Compare with a "
                "tolerance (math.isclose) or round ηc first."
            )
        return f"at η = {lr:g} expected {expected}, got {got}."
    return None


ex2 = Exercise(
    "Exercise 2 · A threshold for η = 3",
    working_thresholds,
    [_in_band],
    verified="the thresholds with ηc in [0.01, 0.3] at η = 3, 0.1 and 10, band edges "
    "included despite float rounding",
    hints=[
        "The band is on the step ηc, not on c.",
        "3 * 0.1 is 0.30000000000000004 in floating point: compare with math.isclose at "
        "the edges.",
    ],
)


# --- Exercise 3 · The baseline at any length -----------------------------------------------


def marker_free_baseline(length: int) -> float:
    return adding_baseline_mse(length)


def _baseline_values(answer, reference) -> str | None:
    got = {length: answer(length) for length in (10, 11, 40)}
    for value in got.values():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)):
            return f"return one number, got a {type(value).__name__}."
    expected = {length: reference(length) for length in got}
    if all(math.isclose(got[t], expected[t], rel_tol=1e-9) for t in got):
        return None
    if all(math.isclose(got[t], 1 / 6, rel_tol=1e-9) for t in got):
        return (
            "1/6 is the error of always answering 1: a model that sees the values, not the "
            "markers, can answer the sum of the two half-means and do better."
        )
    if math.isclose(got[10], expected[10]) and math.isclose(got[40], expected[40]):
        return (
            "right for even T; for odd T the halves have T // 2 and T - T // 2 steps, so "
            "the two terms differ: (1/12)(2 - 1/k1 - 1/k2)."
        )
    if math.isclose(got[10], expected[10] / 2, rel_tol=1e-6):
        return "off by a factor 2: each half contributes its own error, and they add."
    if math.isclose(got[10], (1 - 1 / 10) / 6, rel_tol=1e-6):
        return "each half has T/2 steps, not T: the error of one half is (1 - 2/T)/12."
    return f"at T = 10 expected {expected[10]:.4f} (= 2/15), got {got[10]:.4f}."


ex3 = Exercise(
    "Exercise 3 · The baseline at any length",
    marker_free_baseline,
    [_baseline_values],
    verified="(1/12)(2 - 1/k1 - 1/k2) with halves of k1 = T // 2 and k2 = T - k1 steps: "
    "2/15 at T = 10, 0.158 at T = 40, odd T included",
    hints=[
        "Without the markers the best answer is the sum of the two half-means; its error "
        "is (u_a - mean of half 1) + (u_b - mean of half 2), two independent terms.",
        "For one half of k values, E[(u_a - mean)^2] = (k - 1)/k × 1/12.",
    ],
)


# --- Exercise 4 · Find the spike -----------------------------------------------------------


def around_largest_norm(
    grad_norm: np.ndarray, loss: np.ndarray, window: int = 25
) -> tuple[int, float, float]:
    spike = int(np.argmax(grad_norm))
    before = float(np.mean(loss[max(spike - window, 0) : spike]))
    after = float(np.mean(loss[spike + 1 : spike + 1 + window]))
    return spike, before, after


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(200)
    norm = 1.0 + 0.1 * np.sin(steps)
    norm[120] = 500.0
    loss = np.where(steps < 120, 1.0 + 0.001 * steps, 3.0 + 0.01 * (steps - 120))
    loss[130] = 9.0  # the loss's own largest value is elsewhere
    return norm, loss


def _around_the_spike(answer, reference) -> str | None:
    norm, loss = _synthetic()
    got = answer(norm.copy(), loss.copy(), 25)
    if not isinstance(got, tuple) or len(got) != 3:
        return "return a tuple (step, loss before, loss after)."
    step, before, after = int(got[0]), float(got[1]), float(got[2])
    expected = reference(norm, loss, 25)
    if step == int(np.argmax(loss)):
        return "you found the largest loss: the question is the step of the largest gradient norm."
    if step != expected[0]:
        return f"the largest norm is at step {expected[0]}, got {step}."
    if math.isclose(before, float(np.mean(loss[95:121]))) or math.isclose(
        before, float(np.mean(loss[96:121]))
    ):
        return "the mean 'before' includes the spike step itself: stop at loss[:step]."
    if math.isclose(after, float(np.mean(loss[120:145]))):
        return "the mean 'after' includes the spike step: start at step + 1."
    if not (math.isclose(before, expected[1]) and math.isclose(after, expected[2])):
        return (
            f"expected loss before {expected[1]:.4f} and after {expected[2]:.4f} (the "
            f"{25} steps on each side, the spike step excluded), got {before:.4f}, {after:.4f}."
        )
    return None


ex4 = Exercise(
    "Exercise 4 · Find the spike",
    around_largest_norm,
    [_around_the_spike],
    verified="the step of the largest norm, and the mean loss over the 25 steps before and "
    "after it, the spike step excluded",
    hints=[
        "np.argmax on the norms; then two slices of the loss that leave out that step.",
        "loss[max(step - window, 0) : step] and loss[step + 1 : step + 1 + window].",
    ],
)

