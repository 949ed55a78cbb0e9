"""Lesson 00's exercises: where norm clipping stops acting, and how far value clipping turns."""

from __future__ import annotations

import math

from clipping_lib.lab.exercises._core import Exercise

__all__ = ["ex1", "ex2"]


def _number(answer, reference) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        return f"answer with one number (an int or a float), not a {type(answer).__name__}."
    return None


# --- Exercise 1: from which threshold does clipping (6, 8) change nothing? -------------

STOPS_CHANGING_FROM = 10.0  # ||(6, 8)|| = sqrt(36 + 64)


def _which_norm(answer, reference) -> str | None:
    mistakes = {
        5.0: "5 is the norm of (3, 4): the exercise's vector is (6, 8).",
        8.0: "8 is the largest coordinate: norm clipping compares the whole vector's "
        "length with c, not its coordinates (value clipping does that).",
        14.0: "14 is |6| + |8|, the 1-norm: clip_by_norm uses the Euclidean norm.",
        6.0: "6 is where the slider stopped: move past it, or compute the norms.",
    }
    return next((m for v, m in mistakes.items() if math.isclose(answer, v)), None)


def _stops_at(answer, reference) -> str | None:
    if not math.isclose(answer, reference, rel_tol=1e-6):
        return f"{answer:g} is not it: below it the clipped norm is c, from it on it is ‖g‖."
    return None


ex1 = Exercise(
    "Exercise 1 · Where clipping stops acting",
    STOPS_CHANGING_FROM,
    [_number, _which_norm, _stops_at],
    verified="from c = ‖(6, 8)‖ = 10 on, norm clipping returns the vector unchanged",
    hints=[
        "Compute torch.linalg.vector_norm(clip_by_norm(torch.tensor([6.0, 8.0]), c)) for c "
        "from 1 to 12 and look where it stops growing.",
        "Norm clipping leaves every vector no longer than c alone.",
    ],
)


# --- Exercise 2: the largest turn of value clipping on (3, 4) --------------------------

LARGEST_TURN_DEGREES = math.degrees(math.acos(7 / (5 * math.sqrt(2))))  # (3, 4) vs (1, 1)


def _in_degrees(answer, reference) -> str | None:
    if math.isclose(answer, math.radians(reference), rel_tol=1e-3):
        return "that is the angle in radians: give it in degrees."
    if math.isclose(answer, 45.0, rel_tol=1e-3):
        return "45° is the diagonal's angle to the axes: measure the turn from g itself."
    if math.isclose(answer, math.degrees(math.atan2(4, 3)), rel_tol=1e-3):
        return "53.13° is g's angle to the x-axis: the turn is the angle between g and its clip."
    return None


def _largest_turn(answer, reference) -> str | None:
    if not math.isclose(answer, reference, abs_tol=0.05):
        return f"{answer:.2f}° is not the largest turn: try thresholds below 3."
    return None


ex2 = Exercise(
    "Exercise 2 · A value-clipping panel",
    LARGEST_TURN_DEGREES,
    [_number, _in_degrees, _largest_turn],
    verified="value clipping turns (3, 4) by at most the angle to (1, 1), reached for c ≤ 3",
    hints=[
        "Below c = 3 both coordinates are cut to c: in which direction does the arrow point?",
        "The largest turn is the angle between (3, 4) and (1, 1): "
        "angle_degrees(torch.tensor([1.0, 1.0]), g).",
    ],
)
