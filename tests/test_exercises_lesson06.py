"""Notebook 06's exercise checkers pass the reference and diagnose typical mistakes."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib import clip_by_value
from clipping_lib.lab.exercises.lesson06 import (
    _throw_gradient,
    ex1,
    ex2,
    ex3,
    ex4,
    smallest_safe_threshold,
    value_clipping_turn,
)
from clipping_lib.lab.noise import clipping_fixed_point, sample_noise


def diagnosis(exercise, answer) -> str:
    message = exercise.diagnose(answer)
    assert message is not None, "the wrong answer passed"
    return message


# ---------------------------------------------------------------- 1 · a norm-clipped step


def in_place(g, lr, c):
    return g.mul_(-lr * min(1.0, c / g.norm().item()))


def uphill(g, lr, c):
    return lr * g * min(1.0, c / g.norm().item())


def value_clipped(g, lr, c):
    return -lr * g.clamp(-c, c)


def always_normalised(g, lr, c):
    return -lr * c * g / g.norm()


def no_lr(g, lr, c):
    return -g * min(1.0, c / g.norm().item())


def with_eps(g, lr, c):
    return -lr * g * min(1.0, c / (g.norm().item() + 1e-6))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (in_place, "changed the gradient it was given"),
        (uphill, "points uphill"),
        (value_clipped, "value clipping"),
        (always_normalised, "below the threshold the step is -lr * g exactly"),
        (no_lr, "multiply by lr"),
        (with_eps, "is off: the largest difference"),
    ],
)
def test_exercise_1_diagnoses(answer, expected):
    assert expected in diagnosis(ex1, answer)


# ---------------------------------------------------------------- 2 · value clipping's turn


def test_exercise_2_reference_is_the_angle_between_the_two_vectors():
    g = _throw_gradient()
    clipped = clip_by_value(g, 0.5)
    assert torch.equal(clipped.abs(), torch.full((2,), 0.5, dtype=torch.float64))
    own = math.degrees(math.atan2(abs(g[1].item()), abs(g[0].item())))
    assert math.isclose(value_clipping_turn(), abs(own - 45.0), abs_tol=1e-9)


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        (lambda: math.radians(value_clipping_turn()), "radians"),
        (lambda: math.degrees(math.atan2(abs(_throw_gradient()[1].item()),
                                         abs(_throw_gradient()[0].item()))), "own angle"),
        (lambda: 45.0, "45 degrees is the value-clipped step's angle"),
        (lambda: 0.0, "norm clipping's turn"),
        (lambda: value_clipping_turn() + 1.0, "is not the angle"),
        (lambda: "13 degrees", "should be a number"),
    ],
)
def test_exercise_2_diagnoses(wrong, expected):
    assert expected in diagnosis(ex2, wrong())


# ---------------------------------------------------------------- 3 · the safe threshold


def test_exercise_3_reference_brackets_the_bias():
    c = smallest_safe_threshold()
    assert clipping_fixed_point(c, "exponential") < 0.01 <= clipping_fixed_point(c - 0.01,
                                                                                  "exponential")


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        (0.2, "looks like a bias"),
        (2.0, "the bias is still"),
        (6.0, "find the smallest"),
        (-1.0, "positive number"),
    ],
)
def test_exercise_3_diagnoses(wrong, expected):
    assert expected in diagnosis(ex3, wrong)


def test_exercise_3_names_the_gaussian_mistake():
    assert "use 'exponential'" in diagnosis(ex3, 1.0)


# ---------------------------------------------------------------- 4 · batches against bias


def summed(m, seed=4):
    return sample_noise("exponential", (4000, 200, m), seed=seed).sum(dim=-1)


def wrong_axis(m, seed=4):
    return sample_noise("exponential", (4000, 200, m), seed=seed).mean(dim=0)


def ignores_m(m, seed=4):
    return sample_noise("exponential", (4000, 200), seed=seed)



@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (wrong_axis, "average over the last axis"),
        (ignores_m, "the same spread for every m"),
        (summed, "you summed the m draws"),
    ],
)
def test_exercise_4_diagnoses(answer, expected):
    assert expected in diagnosis(ex4, answer)


def test_a_wrong_answer_prints_a_diagnosis_not_a_traceback(capsys):
    assert not ex4.check(summed)
    out = capsys.readouterr().out
    assert out.startswith("✗ Not yet:") and "Traceback" not in out
