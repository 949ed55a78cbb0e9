"""Lesson 11's exercise checkers: the references pass, typical mistakes get their own diagnosis."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.exercises.lesson11 import ex1, ex2, ex3


@pytest.mark.parametrize("exercise", [ex1, ex2, ex3], ids=["ex1", "ex2", "ex3"])
def test_the_reference_passes(exercise, capsys):
    assert exercise.check(exercise.reference)
    assert "✓ Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [
        (lambda n, p=2.0: n.mean(), "you averaged the norms"),
        (lambda n, p=2.0: n.sum(), "you added the norms"),
        (lambda n, p=2.0: n.pow(p).sum(), "take the p-th root"),
        (lambda n, p=2.0: n.pow(2).sum().sqrt(), "that is the 2-norm"),
        (lambda n, p=2.0: n.pow(p).sum().pow(1 / p), "the largest norm"),  # inf forgotten
        (lambda n, p=2.0: float(n.norm()), "return a tensor"),
    ],
    ids=["mean", "sum", "no-root", "always-2", "inf", "float"],
)
def test_ex1_diagnoses(answer, diagnosis, capsys):
    assert not ex1.check(answer)
    assert diagnosis in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [
        (lambda s: s.sum().sqrt(), "each shard counts 2 times"),
        (lambda s: s[0, 0].sqrt(), "one rank's local norm"),
        (lambda s: s[0].sum(), "take the square root"),
        (lambda s: s[:, 0].sum().sqrt(), "summed down a column"),
        (lambda s: s.sum(1).sqrt(), "the model has one norm"),
    ],
    ids=["all-ranks", "one-rank", "no-root", "column", "per-row"],
)
def test_ex2_diagnoses(answer, diagnosis, capsys):
    assert not ex2.check(answer)
    assert diagnosis in capsys.readouterr().out


def no_step(max_norm, lr):
    def hook(p):
        p.grad = None

    return hook


def keeps_the_gradient(max_norm, lr):
    def hook(p):
        with torch.no_grad():
            p.add_(p.grad * torch.clamp(max_norm / (p.grad.norm() + 1e-6), max=1.0), alpha=-lr)

    return hook


def never_clips(max_norm, lr):
    def hook(p):
        with torch.no_grad():
            p.add_(p.grad, alpha=-lr)
        p.grad = None

    return hook


def exact_clip_twice_the_rate(max_norm, lr):
    def hook(p):
        with torch.no_grad():
            p.add_(p.grad * torch.clamp(max_norm / p.grad.norm(), max=1.0), alpha=-2 * lr)
        p.grad = None

    return hook


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [
        (no_step, "the weights did not move"),
        (keeps_the_gradient, "set p.grad = None"),
        (never_clips, "the step used the raw gradient"),
        (exact_clip_twice_the_rate, "the weights after the hooked backward is off"),
        (lambda max_norm, lr: 0.0, "return the hook itself"),
    ],
    ids=["no-step", "keeps-grad", "raw", "off", "none"],
)
def test_ex3_diagnoses(answer, diagnosis, capsys):
    assert not ex3.check(answer)
    assert diagnosis in capsys.readouterr().out
