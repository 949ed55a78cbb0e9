"""Notebook 02's exercise checkers: the reference passes, typical mistakes get their diagnosis."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.lab.exercises.lesson02 import ex1, ex2, ex3, ex4, truncated_cosine


def _diagnosis(exercise, answer, capsys) -> str:
    assert not exercise.check(answer)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((math.exp(3 / 50), math.exp(-3 / 50)), "natural logarithm"),
        ((1000 ** (1 / 49), 1000 ** (-1 / 49)), "off by one in T"),
        ((10 ** (-3 / 50), 10 ** (3 / 50)), "swapped"),
        ((20.0, 0.05), "factor per step"),
    ],
)
def test_ex1_diagnoses(answer, message, capsys):
    assert message in _diagnosis(ex1, answer, capsys)


@pytest.mark.parametrize(
    ("W", "message"),
    [
        (torch.tensor([[0.5, 0.0], [0.0, 0.5]]), "normal"),
        (torch.tensor([[0.5, 3.0], [0.0, 0.5]]), "larger"),
        (torch.tensor([[1.0, 40.0], [0.0, 0.5]]), "on its diagonal"),
        (torch.eye(3), "2 x 2"),
    ],
)
def test_ex2_diagnoses(W, message, capsys):
    assert message in _diagnosis(ex2, W, capsys)


def test_ex3_sign_modulus_and_complex(capsys):
    assert ex3.reference == pytest.approx(-1.3)
    assert "wrong sign" in _diagnosis(ex3, 1.3, capsys)
    assert "largest *modulus*" in _diagnosis(ex3, 1.1, capsys)
    assert "real eigenvalues" in _diagnosis(ex3, complex(-1.3, 0.2), capsys)
    assert ex3.check(torch.tensor(-1.3, dtype=torch.float64))


def test_ex4_oldest_terms_off_by_one_and_no_normalisation(capsys):
    oldest = lambda terms, k: truncated_cosine(terms.flip(0), k)  # noqa: E731
    assert "k oldest terms" in _diagnosis(ex4, oldest, capsys)
    plus_one = lambda terms, k: truncated_cosine(terms, k + 1)  # noqa: E731
    assert "off by one" in _diagnosis(ex4, plus_one, capsys)
    dot = lambda terms, k: (terms.sum(0) * terms[-k:].sum(0)).sum().item()  # noqa: E731
    assert "not a cosine" in _diagnosis(ex4, dot, capsys)
