"""Lesson 07's exercise checkers: the reference passes, typical mistakes get their diagnosis."""

from __future__ import annotations

import numpy as np

from clipping_lib.lab.exercises.lesson07 import ex1, ex2, ex3
from clipping_lib.lab.panels.adaptive import RUN


def _diagnosis(exercise, answer, capsys) -> str:
    assert not exercise.check(answer)
    return capsys.readouterr().out


def test_ex1_diagnoses_the_mean_the_whole_run_and_the_factor(capsys):
    def mean(norms, steps=50, factor=5.0):
        return factor * float(np.mean(norms[:steps]))

    def whole_run(norms, steps=50, factor=5.0):
        return factor * float(np.median(norms))

    def no_factor(norms, steps=50, factor=5.0):
        return float(np.median(norms[:steps]))

    def off_by_one(norms, steps=50, factor=5.0):
        return factor * float(np.median(norms[: steps + 1]))

    def hard_coded(norms, steps=50, factor=5.0):
        return 5.0 * float(np.median(norms[:50]))

    assert "you took the mean" in _diagnosis(ex1, mean, capsys)
    assert "median of every norm" in _diagnosis(ex1, whole_run, capsys)
    assert "off by the factor" in _diagnosis(ex1, no_factor, capsys)
    assert "steps + 1" in _diagnosis(ex1, off_by_one, capsys)
    assert "use the arguments" in _diagnosis(ex1, hard_coded, capsys)
    assert "not an array" in _diagnosis(ex1, lambda n, steps=50, factor=5.0: n[:steps], capsys)


def test_ex2_diagnoses_no_clipping_no_learning_rate_and_absolute_steps(capsys):
    reference = ex2.reference

    def unclipped(clipper, step):
        return reference(lambda params: None, step)

    def no_lr(clipper, step):
        return reference(clipper, step) / RUN["lr"]

    assert "unclipped step" in _diagnosis(ex2, unclipped, capsys)
    assert "factor 10" in _diagnosis(ex2, no_lr, capsys)
    assert "raised ZeroDivisionError" in _diagnosis(ex2, lambda clipper, step: 1 / 0, capsys)


def test_ex3_diagnoses_a_learning_rate_cut_and_a_percentile_that_is_a_spike(capsys):
    assert "cut of the learning rate" in _diagnosis(ex3, 10, capsys)
    assert "itself a spike" in _diagnosis(ex3, 99, capsys)
    assert "0 < p <= 100" in _diagnosis(ex3, 150, capsys)
    assert ex3.check(90)
