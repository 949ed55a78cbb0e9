"""Lesson 08's exercise checkers: the references pass, typical mistakes get their own diagnosis."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.exercises import lesson08
from clipping_lib.lab.exercises.lesson08 import ex1, ex2, ex3, per_rank_noise_std, update_shifts


def test_ex1_four_workers(capsys):
    assert ex1.check(ex1.reference)  # starts four gloo workers once (cached)
    assert not ex1.check(lambda: ex1.reference()[:2])
    assert "WorkerGroup(4)" in capsys.readouterr().out.splitlines()[-1]
    assert not ex1.check(lambda: ex1.reference()[0])
    assert "one result dict per rank" in capsys.readouterr().out


def swapped(flat, drop=28, c=3.0):
    per_sample, batch = update_shifts(flat, drop, c)
    return batch, per_sample


def divides_by_b_minus_1(flat, drop=28, c=3.0):
    return lesson08._per_sample_shift_dividing_by_b_minus_1(flat, drop), 0.0


def never_clips(flat, drop=28, c=3.0):
    keep = torch.arange(len(flat)) != drop
    moved = flat.sum(dim=0) / len(flat) - flat[keep].sum(dim=0) / len(flat)
    return torch.linalg.vector_norm(moved).item(), update_shifts(flat, drop, c)[1]


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [
        (swapped, "swapped"),
        (divides_by_b_minus_1, "keep the divisor B = 32"),
        (never_clips, "exceeds C/B"),
        (lambda flat: 1.0, "a pair of numbers"),
    ],
)
def test_ex2_diagnoses(answer, diagnosis, capsys):
    assert not ex2.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex2_reference_respects_the_bound():
    per_sample, batch = update_shifts(lesson08._the_lesson_gradients())
    assert per_sample <= lesson08.PER_SAMPLE_C / 32 + 1e-6 < batch


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [
        (lambda sigma, c, w: sigma * c, "sqrt(2) * sigma*C"),
        (lambda sigma, c, w: sigma * c / w, "variances do"),
        (lambda sigma, c, w: 0.0, "expected"),
    ],
)
def test_ex3_diagnoses(answer, diagnosis, capsys):
    assert not ex3.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex3_total_noise_is_sigma_c():
    generator = torch.Generator().manual_seed(0)
    share = per_rank_noise_std(1.0, 3.0, 4)
    total = (torch.randn(4, 200_000, generator=generator) * share).sum(dim=0)
    assert abs(total.std().item() / 3.0 - 1.0) < 0.01
