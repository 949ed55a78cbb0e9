r"""Exercises of notebook 01 (exploding gradients, the geometry of clipping).

* ``ex1``: ``no_turn_angles(step)``, the angles at which value clipping does not turn a
  2-D gradient of length 3 at :math:`c = 1`.
* ``ex2``: ``worst_case_gradient(d)``, a :math:`g \in \mathbb R^d` whose value-clipped
  version has cosine close to :math:`1/\sqrt d` with :math:`g` (:math:`c = 1`).
* ``ex3``: the pair of norms after value and norm clipping of :math:`10^6` coordinates of
  0.01 at 0.005 (a number answer).
* ``ex4``: ``heavy_coordinates(d, generator)``, coordinates of standard deviation 1 that
  value clipping at :math:`c = \sigma` turns by more than 60° in :math:`d = 10^4`
  (open-ended: the angle and the scale are checked).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch

from clipping_lib.clip import clip_by_norm, clip_by_value
from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.panels import geometry

__all__ = ["ex1", "ex2", "ex3", "ex4"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


# --- Exercise 1 · Where value clipping does not turn g ------------------------------------


def no_turn_angles(step: float) -> list[float]:
    grid = np.arange(0, 360, step)
    turns = np.array([geometry.clip_geometry(float(a), 3.0, 1.0).value_angle for a in grid])
    return grid[turns < 1e-6].tolist()


_SPECIAL = [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]


def _angles(answer, reference) -> str | None:
    for step in (0.5, 15.0):
        got = answer(step)
        try:
            got = sorted(float(a) for a in got)
        except TypeError:
            return f"no_turn_angles({step}) returned {got!r}: return a list of angles in degrees."
        if got and max(got) <= 2 * math.pi + 1e-9 and len(got) > 1:
            return "these look like radians: the exercise works in degrees, on [0, 360)."
        if 360.0 in got:
            return "360° is 0° again: use angles in [0, 360), so each direction appears once."
        if got == [a for a in _SPECIAL if a % 90 == 0]:
            return (
                "you found the axes (one coordinate is zero) but not the diagonals: at 45°, "
                "135°, … both coordinates are cut to ±c, equally, so the direction is kept too."
            )
        if got == [a for a in _SPECIAL if a % 90 == 45]:
            return (
                "you found the diagonals but not the axes: at 0°, 90°, … one coordinate is zero "
                "and only the other is cut, so the direction is kept."
            )
        if len(got) > len(_SPECIAL) and set(_SPECIAL) <= set(got):
            return (
                f"{len(got)} angles on a {step:g}° grid: near the special angles value "
                "clipping turns g by a little, not by zero; keep turns below 1e-6°."
            )
        if got != _SPECIAL:
            return f"on a {step:g}° grid you found {got}; expected 8 angles. Look again."
    return None


ex1 = Exercise(
    "Exercise 1 · Where value clipping does not turn g",
    no_turn_angles,
    [_angles],
    verified="the 8 angles 0°, 45°, …, 315° on grids of 0.5° and 15°",
    hints=[
        "geometry.clip_geometry(angle, 3.0, 1.0).value_angle is the turn in degrees.",
        "Loop over np.arange(0, 360, step) and keep the angles whose turn is below 1e-6.",
    ],
)


# --- Exercise 2 · How far value clipping can turn g ---------------------------------------


def worst_case_gradient(d: int) -> torch.Tensor:
    g = torch.ones(d, dtype=torch.float64)
    g[0] = 1e6  # one exploding coordinate, all the others at c
    return g


def _worst_case(answer, reference) -> str | None:
    for d in (100, 10):
        g = answer(d)
        if not isinstance(g, torch.Tensor) or g.shape != (d,):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            return f"worst_case_gradient({d}) should be a tensor of shape ({d},), got {shape}."
        cosine = _cosine(clip_by_value(g, 1.0), g)
        target = 1 / math.sqrt(d)
        if abs(cosine / target - 1) < 0.02:
            continue
        others = g.double().abs().sort(descending=True).values[1:]
        if cosine > 0.99:
            return (
                f"value clipping barely turned your g (cosine {cosine:.4f}, d = {d}): it turns "
                "g only when it cuts some coordinates more than others."
            )
        if others.min() < 1.0:
            return (
                f"cosine {cosine:.3f}, above 1/√d = {target:.3f} (d = {d}): some of the other "
                "coordinates are below c, so clipping leaves them smaller than the cut one; "
                "put them all at or above c."
            )
        return (
            f"cosine {cosine:.3f}, above 1/√d = {target:.3f} (d = {d}): the large coordinate "
            "is not large enough to dominate g; make it huge (1e6)."
        )
    return None


ex2 = Exercise(
    "Exercise 2 · How far value clipping can turn g",
    worst_case_gradient,
    [_worst_case],
    verified="clip_by_value(g, 1) has cosine 1/√d with g, within 2%, for d = 100 and d = 10",
    hints=[
        "One coordinate much larger than all the others together, the others at c.",
        "g = (M, 1, 1, …, 1) with M = 1e6: the clipped vector is (1, 1, …, 1).",
    ],
)


# --- Exercise 3 · Which one bounds the step? ----------------------------------------------


def _norms_after_clipping() -> tuple[float, float]:
    g = torch.full((10**6,), 0.01, dtype=torch.float64)
    by_value, by_norm = clip_by_value(g, 0.005).norm().item(), clip_by_norm(g, 0.005).norm().item()
    return round(by_value, 9), round(by_norm, 9)  # to 9 decimals: no rounding noise shown


def _pair(answer, reference) -> str | None:
    try:
        by_value, by_norm = (float(a) for a in answer)
    except (TypeError, ValueError):
        return "answer should be a pair of numbers: (norm after value clipping, after norm)."
    value_ref, norm_ref = reference
    if math.isclose(by_value, norm_ref, rel_tol=1e-3) and math.isclose(
        by_norm, value_ref, rel_tol=1e-3
    ):
        return "the two norms are swapped: first the norm after value clipping, then after norm."
    if math.isclose(by_value, 0.005, rel_tol=1e-3):
        return (
            "value clipping bounds each coordinate by 0.005, not the norm: 10⁶ coordinates of "
            "0.005 have norm 0.005·√10⁶."
        )
    if math.isclose(by_value, 5000, rel_tol=1e-3):
        return "you added the coordinates: a norm is the square root of the sum of squares."
    if math.isclose(by_value, 10, rel_tol=1e-3):
        return "10 is the norm before clipping; every coordinate 0.01 > 0.005 is cut to 0.005."
    if not math.isclose(by_value, value_ref, rel_tol=1e-3):
        return f"the norm after value clipping is not {by_value:g}: every coordinate becomes 0.005."
    if math.isclose(by_norm, 10, rel_tol=1e-3):
        return "10 is the norm before clipping: norm clipping brings it down to max_norm."
    if not math.isclose(by_norm, norm_ref, rel_tol=1e-3):
        return (
            f"the norm after norm clipping is not {by_norm:g}: norm clipping rescales to max_norm."
        )
    return None


ex3 = Exercise(
    "Exercise 3 · Which one bounds the step?",
    _norms_after_clipping(),
    [_pair],
    verified="5 after value clipping (1000 times the threshold), 0.005 after norm clipping",
    hints=[
        "The norm before clipping is 0.01·√(10⁶) = 10.",
        "Value clipping sets every coordinate to 0.005; norm clipping rescales to norm 0.005.",
    ],
)


# --- Exercise 4 · A distribution that value clipping turns by more than 60° ---------------


def heavy_coordinates(d: int, generator: torch.Generator) -> torch.Tensor:
    g = 0.3 * torch.randn(d, generator=generator)  # the many: just below c once rescaled
    spikes = torch.randperm(d, generator=generator)[: d // 1000]  # the few: 0.1%, huge
    g[spikes] = 30.0 * torch.randn(len(spikes), generator=generator).sign()
    return g / g.std()  # sigma = 1


def _heavy(answer, reference) -> str | None:
    d, angles = 10_000, []
    for seed in range(3):
        g = answer(d, torch.Generator().manual_seed(seed))
        if not isinstance(g, torch.Tensor) or g.shape != (d,):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            return f"heavy_coordinates({d}, generator) should have shape ({d},), got {shape}."
        if not torch.isfinite(g).all():
            return "some coordinates are not finite: keep them finite."
        std = g.double().std().item()
        if abs(std - 1) > 0.05:
            return f"standard deviation {std:.3g}: rescale the coordinates to σ = 1 (g / g.std())."
        angles.append(math.degrees(math.acos(min(1.0, _cosine(clip_by_value(g, 1.0), g)))))
    angle = statistics.median(angles)
    if angle <= 60:
        return (
            f"value clipping at c = σ turned it by {angle:.0f}° (median of 3 draws), not more "
            "than 60°: put most of the squared norm into a few coordinates far above c and keep "
            "the many others below c."
        )
    return None


ex4 = Exercise(
    "Exercise 4 · A distribution that value clipping turns by more than 60°",
    heavy_coordinates,
    [_heavy],
    verified="σ = 1 within 5% and a turn of more than 60° at c = σ in d = 10⁴ (median of 3 seeds)",
    hints=[
        "Gaussian and Student-t turn g by about 18° and 32°: you need far heavier tails.",
        "Mix 99.9% small coordinates (0.3) with 0.1% huge ones (30), then divide by g.std().",
    ],
)
