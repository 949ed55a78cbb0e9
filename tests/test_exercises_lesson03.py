"""Notebook 03's exercise checkers pass the reference and diagnose typical mistakes."""

from __future__ import annotations

import pytest
import torch

from clipping_lib import clip_grad_norm_
from clipping_lib.lab.exercises.lesson03 import LR, MAX_NORM, ex1, ex2, ex3
from clipping_lib.lab.loops import loss_of
from clipping_lib.recipes import amp_clip_and_step


def diagnosis(exercise, answer) -> str:
    message = exercise.diagnose(answer)
    assert message is not None, "the wrong answer passed"
    return message


# ---------------------------------------------------------------- 1 · AMP + accumulation


def _forward_backward(model, micro_batches, scaler, divide=True):
    for x_mb, y_mb in micro_batches:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            loss = loss_of(model, x_mb, y_mb) / (len(micro_batches) if divide else 1)
        scaler.scale(loss).backward()


def no_unscale(model, micro_batches, optimizer, scaler, max_norm):
    optimizer.zero_grad()
    _forward_backward(model, micro_batches, scaler)
    norm = clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return norm


def unscale_every_micro_batch(model, micro_batches, optimizer, scaler, max_norm):
    optimizer.zero_grad()
    for batch in micro_batches:
        _forward_backward(model, [batch], scaler)
        scaler.unscale_(optimizer)
    return amp_clip_and_step(scaler, optimizer, model.parameters(), max_norm)


def summed_loss(model, micro_batches, optimizer, scaler, max_norm):
    optimizer.zero_grad()
    _forward_backward(model, micro_batches, scaler, divide=False)
    return amp_clip_and_step(scaler, optimizer, model.parameters(), max_norm)


def no_zero_grad(model, micro_batches, optimizer, scaler, max_norm):
    _forward_backward(model, micro_batches, scaler)
    return amp_clip_and_step(scaler, optimizer, model.parameters(), max_norm)


def no_return(model, micro_batches, optimizer, scaler, max_norm):
    optimizer.zero_grad()
    _forward_backward(model, micro_batches, scaler)
    amp_clip_and_step(scaler, optimizer, model.parameters(), max_norm)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (no_unscale, "Call scaler.unscale_(optimizer) before clipping"),
        (unscale_every_micro_batch, "unscale_ was called more than once"),
        (summed_loss, "divide each micro-batch's loss by the number of micro-batches"),
        (no_zero_grad, "optimizer.zero_grad()"),
        (no_return, "return the norm before clipping"),
    ],
)
def test_exercise_1_diagnoses(answer, expected):
    assert expected in diagnosis(ex1, answer)


def test_exercise_1_prints_a_diagnosis_not_a_traceback(capsys):
    assert not ex1.check(no_unscale)
    out = capsys.readouterr().out
    assert out.startswith("✗ Not yet:") and "1024 times the true one" in out


# ---------------------------------------------------------------- 2 · per-variable clipping


def global_clip(parameters, max_norm):
    parameters = list(parameters)
    norms = [p.grad.norm() for p in parameters if p.grad is not None]
    clip_grad_norm_(parameters, max_norm)
    return norms


def norms_after(parameters, max_norm):
    out = []
    for p in parameters:
        if p.grad is not None:
            clip_grad_norm_(p, max_norm)
            out.append(p.grad.norm())
    return out


def two_passes(parameters, max_norm):
    norms = [p.grad.norm() for p in parameters if p.grad is not None]
    for p in parameters:
        clip_grad_norm_(p, max_norm)
    return norms


def keeps_none(parameters, max_norm):
    return [clip_grad_norm_(p, max_norm) if p.grad is not None else 0.0 for p in parameters]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (global_clip, "that is global clipping"),
        (norms_after, "you returned the norms after clipping"),
        (two_passes, "a generator can be iterated only once"),
        (keeps_none, "skip parameters without a gradient"),
    ],
)
def test_exercise_2_diagnoses(answer, expected):
    assert expected in diagnosis(ex2, answer)


# ---------------------------------------------------------------- 3 · the stalled run


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda k: (LR * 0.99**k, MAX_NORM), "for the first 100 steps"),
        (lambda k: (LR * 0.99 ** max(0, k - 100), MAX_NORM * 0.99 ** max(0, k - 100)),
         "changed both"),
        (lambda k: (LR, MAX_NORM), "never changes anything"),
        (lambda k: (LR * 0.9999 ** max(0, k - 100), MAX_NORM), "above the minimum"),
        (lambda k: LR, "should return (lr, max_norm)"),
    ],
)
def test_exercise_3_diagnoses(answer, expected):
    assert expected in diagnosis(ex3, answer)


def test_exercise_3_also_accepts_a_shrinking_threshold():
    assert ex3.diagnose(lambda k: (LR, MAX_NORM * 0.97 ** max(0, k - 100))) is None
