r"""Notebook 06's exercises: a clipped step, value clipping's turn, the bias of clipped SGD.

* :data:`ex1` · ``norm_clipped_step(g, lr, c)``: the descent step
  :math:`-\eta\,g\min(1, c/\lVert g\rVert)`, exact, input untouched.
* :data:`ex2` · ``answer``: the angle, in degrees, between the value-clipped gradient and
  the gradient where the unclipped path was thrown.
* :data:`ex3` · ``answer``: the smallest threshold at which the bias of clipped SGD under
  the skewed (exponential) noise is 0.01.
* :data:`ex4` · ``batch_noise(m, seed)``: the skewed noise averaged over mini-batches of
  ``m`` draws, shape ``(4000, 200)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from clipping_lib.clip import clip_by_value
from clipping_lib.lab.exercises._core import Exercise, tensor_mismatch
from clipping_lib.lab.landscape import descent_path, loss_and_gradient
from clipping_lib.lab.noise import clipping_fixed_point, sample_noise
from clipping_lib.lab.panels.cliff import DEFAULT_START, PATH_STEPS

__all__ = ["ex1", "ex2", "ex3", "ex4"]

# ------------------------------------------------------------------ 1 · a norm-clipped step


def norm_clipped_step(g, lr, c):
    return -lr * g * min(1.0, c / torch.linalg.vector_norm(g).item())


_CASES = [  # (g, lr, c): clipped, unclipped, on the threshold, a tiny gradient
    ([3.0, 4.0], 1.0, 0.5), ([0.03, -0.04], 5.0, 0.1), ([0.6, 0.8], 2.0, 1.0),
    ([2000.0, -3000.0], 1.0, 0.5), ([1e-8, 0.0], 0.1, 1.0),
]  # fmt: skip


def _step(answer: Callable, g: list[float], lr: float, c: float) -> tuple[Tensor, Tensor]:
    gradient = torch.tensor(g, dtype=torch.float64)
    return gradient, answer(gradient.clone(), lr, c)


def _input_untouched(answer: Callable, reference: Callable) -> str | None:
    gradient = torch.tensor([3.0, 4.0], dtype=torch.float64)
    answer(gradient, 1.0, 0.5)
    if not torch.equal(gradient, torch.tensor([3.0, 4.0], dtype=torch.float64)):
        return "your function changed the gradient it was given: compute the step on a copy."
    return None


def _downhill(answer: Callable, reference: Callable) -> str | None:
    gradient, step = _step(answer, [3.0, 4.0], 1.0, 0.5)
    if isinstance(step, Tensor) and step.shape == gradient.shape and float(step @ gradient) > 0:
        return "the step points uphill: a descent step is minus the (clipped) gradient."
    return None


def _keeps_the_direction(answer: Callable, reference: Callable) -> str | None:
    _, step = _step(answer, [3.0, 0.5], 1.0, 1.0)
    clamped = torch.tensor([1.0, 0.5], dtype=torch.float64)
    if isinstance(step, Tensor) and step.shape == (2,) and torch.allclose(step.abs(), clamped):
        return (
            "each coordinate was clipped on its own (value clipping): norm clipping rescales "
            "the whole vector by one factor and keeps its direction."
        )
    return None


def _small_gradients_pass(answer: Callable, reference: Callable) -> str | None:
    _, step = _step(answer, [0.03, -0.04], 5.0, 0.1)
    if isinstance(step, Tensor) and math.isclose(step.norm().item(), 0.5, rel_tol=1e-9):
        return (
            "a gradient of norm 0.05, below c = 0.1, was rescaled to length lr * c: below the "
            "threshold the step is -lr * g exactly (only gradients longer than c are clipped)."
        )
    return None


def _same_steps(answer: Callable, reference: Callable) -> str | None:
    for g, lr, c in _CASES:
        gradient, step = _step(answer, g, lr, c)
        expected = reference(gradient, lr, c)
        if isinstance(step, Tensor) and step.shape == expected.shape:
            ratio = (step.norm() / expected.norm()).item()
            if math.isclose(ratio, 1 / lr, rel_tol=1e-9) and lr != 1.0:
                return f"for lr = {lr:g} the step is lr times too short: multiply by lr."
        message = tensor_mismatch(step, expected, f"the step for g = {g}, lr = {lr:g}, c = {c:g}",
                                  rtol=1e-12, atol=0.0)  # fmt: skip
        if message:
            return message
    return None


ex1 = Exercise(
    "Exercise 1 · Same longest step, different paths?",
    norm_clipped_step,
    [_input_untouched, _downhill, _keeps_the_direction, _small_gradients_pass, _same_steps],
    verified=(
        "the step -lr * g * min(1, c/||g||) on 5 gradients (clipped, unclipped, on the "
        "threshold, huge, tiny), in float64 to 1e-12, the gradient untouched"
    ),
    hints=[
        "Two cases: ||g|| <= c (the step is -lr * g) and ||g|| > c (the step has length "
        "lr * c along -g). One formula covers both: min(1, c / ||g||).",
        "torch.linalg.vector_norm(g) is the norm; multiply, do not modify g in place.",
    ],
)

# ------------------------------------------------------------------ 2 · value clipping's turn


def _throw_gradient() -> Tensor:
    path = descent_path(*DEFAULT_START, lr=1.0, steps=PATH_STEPS)
    w, b = path.points[int(path.step_length.argmax())]
    return torch.tensor(loss_and_gradient(w, b)[1:], dtype=torch.float64)


def value_clipping_turn(c=0.5):
    g = _throw_gradient()  # the gradient where the unclipped path was thrown
    clipped = clip_by_value(g, c)
    cosine = (clipped @ g) / (clipped.norm() * g.norm())
    return math.degrees(math.acos(min(1.0, cosine.item())))


def _number(answer: object) -> float:
    value = answer() if callable(answer) else answer
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"the answer should be a number, got {type(value).__name__}")
    return float(value)


def _degrees(answer: object, reference: Callable) -> str | None:
    got, expected = _number(answer), reference()
    g = _throw_gradient()
    from_w_axis = math.degrees(math.atan2(abs(g[1].item()), abs(g[0].item())))
    if math.isclose(got, math.radians(expected), rel_tol=1e-3):
        return "that is the angle in radians: the exercise asks for degrees (math.degrees)."
    if math.isclose(got, from_w_axis, abs_tol=0.1) or math.isclose(got, 90 - from_w_axis,
                                                                    abs_tol=0.1):
        return (
            f"{got:.1f} degrees is the gradient's own angle from an axis; the exercise asks for "
            "the angle between the value-clipped gradient and the gradient."
        )
    if math.isclose(got, 45.0, abs_tol=0.1):
        return (
            "45 degrees is the value-clipped step's angle from the w axis (it is (±c, ±c)); "
            "the exercise asks for its angle to the gradient."
        )
    if abs(got) < 0.1:
        return (
            "0 degrees is norm clipping's turn, which keeps the direction; value clipping "
            "clamps each coordinate and turns the step."
        )
    if not math.isclose(got, expected, abs_tol=0.1):
        return f"{got:.3g} degrees is not the angle (to 0.1 degree): which vectors did you compare?"
    return None


ex2 = Exercise(
    "Exercise 2 · Where value clipping turns",
    value_clipping_turn,
    [_degrees],
    verified="the angle between clip_by_value(g, 0.5) and g at the throw point, to 0.1 degree",
    hints=[
        "Both coordinates of g exceed c there, so clip_by_value(g, c) is (±c, ±c).",
        "The angle between two vectors u and v is acos(u·v / (|u| |v|)); math.degrees "
        "converts it.",
    ],
)

# ------------------------------------------------------------------ 3 · the safe threshold


def smallest_safe_threshold(bias=0.01):
    coarse = torch.linspace(1.0, 10.0, 37, dtype=torch.float64)  # the bias falls as c grows
    c_high = coarse[clipping_fixed_point(coarse, "exponential") < bias][0].item()
    fine = torch.linspace(c_high - 0.25, c_high, 51, dtype=torch.float64)
    return fine[clipping_fixed_point(fine, "exponential") < bias][0].item()


def _safe(answer: object, reference: Callable) -> str | None:
    got, expected = _number(answer), reference()
    if got <= 0 or not math.isfinite(got):
        return f"a threshold must be a positive number, got {got:g}."
    skewed = clipping_fixed_point(got, "exponential").item()
    if got < 0.5 and skewed > 0.05:
        return (
            f"{got:g} looks like a bias, not a threshold: the answer is the threshold c from "
            "which on the bias is below 0.01."
        )
    if skewed >= 0.0101:
        gaussian = clipping_fixed_point(got, "gaussian").abs().item()
        hint = " (Gaussian noise has no bias at any c: use 'exponential')"
        hint = hint if gaussian < 0.01 else ""
        return f"at c = {got:.3g} the bias is still {skewed:.4f}, above 0.01{hint}."
    if got > 1.02 * expected:
        return (
            f"at c = {got:.3g} the bias is {skewed:.4f}, already below 0.01, but a smaller "
            "threshold also gets there: find the smallest."
        )
    return None


ex3 = Exercise(
    "Exercise 3 · The smallest safe threshold",
    smallest_safe_threshold,
    [_safe],
    verified="the bias at your c is below 0.01, and within 2% of the smallest such c",
    hints=[
        "clipping_fixed_point accepts a tensor of thresholds: evaluate a grid at once.",
        "The bias falls as c grows: take the first threshold of a fine grid whose bias is "
        "below 0.01.",
    ],
)

# ------------------------------------------------------------------ 4 · batches against bias


def batch_noise(m, seed=4):
    return sample_noise("exponential", (4000, 200, m), seed=seed).mean(dim=-1)


def _shape_and_spread(answer: Callable, reference: Callable) -> str | None:
    spreads = {}
    for m in (1, 4, 16):
        noise = answer(m, seed=4)
        if not isinstance(noise, Tensor):
            return f"batch_noise({m}) should return a tensor, got {type(noise).__name__}."
        if noise.shape != (4000, 200):
            return (
                f"batch_noise({m}) has shape {tuple(noise.shape)}; expected (4000, 200): "
                "draw (4000, 200, m) and average over the last axis, the m draws."
            )
        if abs(noise.mean().item()) > 0.01:
            return f"batch_noise({m}) has mean {noise.mean():.3f}; the noise must have mean 0."
        spreads[m] = noise.std().item()
    if math.isclose(spreads[16], spreads[1], rel_tol=0.05):
        return "the noise has the same spread for every m: average m draws per step."
    if math.isclose(spreads[16], 4 * spreads[1], rel_tol=0.05):
        return (
            "the spread grows like sqrt(m): you summed the m draws. Average them (the mean "
            "of m draws has spread 1/sqrt(m))."
        )
    for m, spread in spreads.items():
        if not math.isclose(spread, 1 / math.sqrt(m), rel_tol=0.05):
            return f"batch_noise({m}) has spread {spread:.3f}; expected 1/sqrt(m) = {m**-0.5:.3f}."
    return None


ex4 = Exercise(
    "Exercise 4 · Batches against bias",
    batch_noise,
    [_shape_and_spread],
    verified="shape (4000, 200), mean 0 and spread 1/sqrt(m) for m = 1, 4, 16",
    hints=[
        "sample_noise('exponential', (4000, 200, m), seed=seed) draws m values per step "
        "and chain.",
        "Average over the last axis: .mean(dim=-1).",
    ],
)
