"""Notebook 04's exercise checkers: the reference passes, typical mistakes get their diagnosis."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.exercises.lesson04 import ex1, ex2, ex3, ex4
from clipping_lib.lab.manual import gradient_set, host_syncs, vectorized_clip_grad_norm_


def _diagnosis(exercise, answer, capsys) -> str:
    assert not exercise.check(answer)
    return capsys.readouterr().out


def _norm(g):
    return torch.linalg.vector_norm(g)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda g, c: g.mul_(c / torch.clamp(_norm(g), min=c)), "changed its input"),
        (lambda g, c: g * (c / (_norm(g) + 1e-6)) if _norm(g) > c else g, "input tensor itself"),
        (lambda g, c: g * (c / (_norm(g) + 1e-6)), "below the threshold were changed"),
        (lambda g, c: g * (c / _norm(g)), "rescaled a gradient of norm 0.5 up"),
        (lambda g, c: g.clamp(-c, c), "value clipping"),
        (lambda g, c: g * (c / torch.clamp(_norm(g) + 1e-6, min=c)), "PyTorch's ε"),
        (lambda g, c: g * (c / torch.clamp(g.abs().sum(), min=c)), "largest difference"),
    ],
)
def test_ex1_diagnoses(answer, message, capsys):
    assert message in _diagnosis(ex1, answer, capsys)


def _with_item(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([_norm(g) for g in grads]))
    if total > max_norm:  # bool(tensor): a host sync
        for g in grads:
            g.mul_(max_norm / (total + 1e-6))
    return total


def _per_tensor(params, max_norm):
    norms = [torch.nn.utils.clip_grad_norm_([p], max_norm) for p in params if p.grad is not None]
    return norms[0] if norms else torch.tensor(0.0)


def _forgets_none(params, max_norm):
    grads = [p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([_norm(g) for g in grads]))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def _norm_after(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([_norm(g) for g in grads]))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return torch.linalg.vector_norm(torch.stack([_norm(g) for g in grads]))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_with_item, "1 host sync counted, expected 0"),
        (_per_tensor, "clipped by its own norm"),
        (_forgets_none, ".grad is None"),
        (_norm_after, "norm after clipping"),
    ],
)
def test_ex2_diagnoses(answer, message, capsys):
    assert message in _diagnosis(ex2, answer, capsys)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            lambda ts: torch.stack([t.max() for t in ts]).max() if ts else torch.tensor(0.0),
            ".abs()",
        ),
        (lambda ts: torch.stack([t.abs().max() for t in ts]) if ts else torch.tensor(0.0), "0-d"),
        (lambda ts: torch.stack([t.abs().max() for t in ts]).max(), "empty list"),
        (
            lambda ts: (
                torch.linalg.vector_norm(torch.cat([t.flatten() for t in ts]))
                if ts
                else torch.tensor(0.0)
            ),
            "L2 norm",
        ),
    ],
)
def test_ex3_diagnoses(answer, message, capsys):
    assert message in _diagnosis(ex3, answer, capsys)


def test_ex4_counts_are_checked_and_the_ratio_is_only_a_number(capsys):
    # The reference times real calls: its ratio is not asserted, only its type and count.
    syncs, ratio = ex4.reference(8)
    assert syncs == 100 and ratio > 0
    vectorised = lambda size: (  # noqa: E731
        host_syncs(vectorized_clip_grad_norm_, gradient_set(100, size)),
        1.5,
    )
    assert "count the naive loop" in _diagnosis(ex4, vectorised, capsys)
    assert "time in seconds" in _diagnosis(ex4, lambda size: (100, 3e-4), capsys)
    assert "pair (syncs, ratio)" in _diagnosis(ex4, lambda size: 1.5, capsys)
    assert ex4.check(lambda size: (100, 1.7))
