"""Notebook 12's exercise checkers: each passes its reference, names each typical mistake."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.lab.exercises.lesson12 import ex1, ex2, ex3


# Exercise 1 -------------------------------------------------------------------------------
def in_place(u, d=1.0):
    rms = u.pow(2).mean().sqrt()
    return u.div_(torch.clamp(rms / d, min=1.0))


def scales_up(u, d=1.0):
    return u / (u.pow(2).mean().sqrt() / d)


def clips_the_norm(u, d=1.0):
    return u / torch.clamp(u.norm() / d, min=1.0)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(in_place, "in place"), (scales_up, "unchanged"), (clips_the_norm, "clipped the norm")],
)
def test_ex1_names_each_mistake(answer, expected):
    assert expected in ex1.diagnose(answer)


# Exercise 2 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (0.1 / 0.001, "square root"),
        (1 / math.sqrt(0.001), "1 - β1"),
        (0.1 / math.sqrt(0.05), "β2 = 0.95"),
        (7.0, "is not it"),
        ("three", "should be a number"),
    ],
)
def test_ex2_names_each_mistake(answer, expected):
    assert expected in ex2.diagnose(answer)


# Exercise 3 -------------------------------------------------------------------------------
def per_parameter(model):
    return torch.stack([p.grad.norm() for p in model.parameters()])


def global_norm(model):
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))


def with_item(model):
    norms = [p.grad.norm().item() for p in model.parameters()]
    layers = [math.hypot(norms[i], norms[i + 1]) for i in range(0, len(norms), 2)]
    return torch.tensor(layers)


def squares(model):
    return ex3.reference(model) ** 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (per_parameter, "one norm per parameter"),
        (global_norm, "global norm"),
        (squares, "square root"),
        (with_item, "copied"),
    ],
)
def test_ex3_names_each_mistake(answer, expected):
    message = ex3.diagnose(answer)
    assert message is not None and expected in message, message
