"""Notebook 01's exercise checkers: the reference passes, typical mistakes get their diagnosis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipping_lib.lab.exercises.lesson01 import ex1, ex2, ex3, ex4
from clipping_lib.lab.panels import geometry


def _diagnosis(exercise, answer, capsys) -> str:
    assert not exercise.check(answer)
    return capsys.readouterr().out


def test_ex1_axes_only_radians_and_loose_tolerance(capsys):
    axes = lambda step: [a for a in np.arange(0, 360, step).tolist() if a % 90 == 0]  # noqa: E731
    assert "not the diagonals" in _diagnosis(ex1, axes, capsys)
    radians = lambda step: np.radians(ex1.reference(step)).tolist()  # noqa: E731
    assert "radians" in _diagnosis(ex1, radians, capsys)

    def loose(step):
        grid = np.arange(0, 360, step)
        return [
            float(a) for a in grid if geometry.clip_geometry(float(a), 3.0, 1.0).value_angle < 1
        ]

    assert "below 1e-6°" in _diagnosis(ex1, loose, capsys)


def test_ex2_no_turn_and_small_coordinates_below_c(capsys):
    assert "barely turned" in _diagnosis(ex2, lambda d: torch.ones(d), capsys)

    def half(d):
        g = torch.full((d,), 0.5)
        g[0] = 1e6
        return g

    assert "below c" in _diagnosis(ex2, half, capsys)
    assert "shape (100,)" in _diagnosis(ex2, lambda d: torch.ones(3), capsys)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((0.005, 0.005), "bounds each coordinate"),
        ((0.005, 5.0), "swapped"),
        ((5000.0, 0.005), "square root of the sum of squares"),
        ((5.0, 10.0), "norm before clipping"),
        ("five", "pair of numbers"),
    ],
)
def test_ex3_diagnoses_each_wrong_pair(answer, message, capsys):
    assert message in _diagnosis(ex3, answer, capsys)


def test_ex3_accepts_pytorchs_eps_within_tolerance():
    assert ex3.diagnose((5.0, 0.005 * 10 / (10 + 1e-6))) is None


def test_ex4_gaussian_turns_too_little_and_scale_is_checked(capsys):
    gaussian = lambda d, generator: torch.randn(d, generator=generator)  # noqa: E731
    assert "not more than 60°" in _diagnosis(ex4, gaussian, capsys)
    wide = lambda d, generator: 3 * torch.randn(d, generator=generator)  # noqa: E731
    assert "rescale the coordinates" in _diagnosis(ex4, wide, capsys)
