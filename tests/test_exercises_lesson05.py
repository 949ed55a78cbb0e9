"""Lesson 05's exercise checkers: the reference passes, typical mistakes get their diagnosis."""

from __future__ import annotations

import math

import numpy as np

from clipping_lib.lab.exercises.lesson05 import ex1, ex2, ex3, ex4
from clipping_lib.lab.training import train_many


def _diagnosis(exercise, answer, capsys) -> str:
    assert not exercise.check(answer)
    return capsys.readouterr().out


def test_ex1_diagnoses_the_learning_rate_and_a_missing_clipped_run(capsys):
    def one_lr(task):
        return train_many(task, [0.3, 0.3], ["none", "norm"], [math.inf, 0.1], steps=200)

    def no_clipping(task):
        return train_many(task, [3.0, 3.0], ["none", "none"], [math.inf, math.inf], steps=200)

    def short(task):
        return train_many(task, [3.0, 3.0], ["none", "norm"], [math.inf, 0.1], steps=199)

    assert "η = 3" in _diagnosis(ex1, one_lr, capsys)
    assert "one with norm clipping" in _diagnosis(ex1, no_clipping, capsys)
    assert "200 steps" in _diagnosis(ex1, short, capsys)
    assert "BatchedHistory" in _diagnosis(ex1, lambda task: 0.77, capsys)


def test_ex2_diagnoses_c_for_eta_c_and_float_rounding_at_the_edge(capsys):
    def strict(lr, thresholds, band=(0.01, 0.3)):
        return [c for c in thresholds if band[0] <= lr * c <= band[1]]

    def c_not_step(lr, thresholds, band=(0.01, 0.3)):
        return [c for c in thresholds if band[0] <= c <= band[1]]

    assert "0.30000000000000004" in _diagnosis(ex2, strict, capsys)
    assert "not the ηc" in _diagnosis(ex2, c_not_step, capsys)
    assert ex2.check(ex2.reference)


def test_ex3_diagnoses_one_sixth_odd_lengths_and_a_factor_two(capsys):
    assert "always answering 1" in _diagnosis(ex3, lambda length: 1 / 6, capsys)
    assert "odd T" in _diagnosis(ex3, lambda length: (1 - 2 / length) / 6, capsys)
    assert "factor 2" in _diagnosis(ex3, lambda length: (1 - 2 / length) / 12, capsys)
    assert "not T" in _diagnosis(ex3, lambda length: (1 - 1 / length) / 6, capsys)


def test_ex4_diagnoses_the_spike_step_in_a_window_and_the_largest_loss(capsys):
    def spike_inside(norm, loss, window=25):
        step = int(np.argmax(norm))
        return step, float(np.mean(loss[step - window + 1 : step + 1])), float(
            np.mean(loss[step + 1 : step + 1 + window]))

    def largest_loss(norm, loss, window=25):
        step = int(np.argmax(loss))
        return step, 0.0, 0.0

    assert "includes the spike step" in _diagnosis(ex4, spike_inside, capsys)
    assert "largest loss" in _diagnosis(ex4, largest_loss, capsys)
    assert "tuple" in _diagnosis(ex4, lambda norm, loss, window=25: 120, capsys)
    assert ex4.check(ex4.reference)
