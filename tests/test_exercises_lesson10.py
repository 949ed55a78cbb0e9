"""Lesson 10's exercise checkers, and the lab bench that runs each tool (tool_runs)."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.clip import clip_grad_value_
from clipping_lib.lab.exercises.lesson10 import (
    clamped_fractions,
    effective_threshold,
    ex1,
    ex2,
    ex3,
    matching_global_threshold,
)
from clipping_lib.lab.tools_check import clipnorm_view


def counts(grads, c):
    return {n: (g.abs() > c).sum().item() for n, g in grads.items()}


def per_tensor(grads, c):
    return {n: float(torch.linalg.vector_norm(g) > c) for n, g in grads.items()}


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [(counts, "counts of elements"), (per_tensor, "acts on each element"),
     (lambda grads, c: [0.5], "one entry per gradient name")],
)  # fmt: skip
def test_ex1_diagnoses(answer, diagnosis, capsys):
    assert not ex1.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex1_reference_counts_what_clip_grad_value_changes():
    grads = {"a": torch.tensor([0.01, -0.2, 0.06, 0.0]), "b": torch.tensor([1.0, -1.0])}
    clipped = {n: torch.nn.Parameter(g.clone()) for n, g in grads.items()}
    for n, p in clipped.items():
        p.grad = grads[n].clone()
    clip_grad_value_(clipped.values(), 0.05)
    changed = {n: (p.grad != grads[n]).double().mean().item() for n, p in clipped.items()}
    assert clamped_fractions(grads, 0.05) == changed == {"a": 0.5, "b": 1.0}


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [(lambda c, n: c * 2.0**16 * 2 ** (n // 2000), "c / s, not c * s"),
     (lambda c, n: c / 2.0**16, "the scale grows"),
     (lambda c, n: c / (2.0**16 * 2 ** (n / 2000)), "integer division"),
     (lambda c, n: c, "expected")],
)  # fmt: skip
def test_ex2_diagnoses(answer, diagnosis, capsys):
    assert not ex2.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex2_reference_after_ten_thousand_steps():
    assert effective_threshold(1.0, 10_000) == 1.0 / 2.0**21


@pytest.mark.parametrize(
    ("answer", "diagnosis"),
    [(lambda norms, c: c * math.sqrt(len(norms)), "√k·c"),
     (lambda norms, c: sum(min(n, c) for n in norms), "sum of squares"),
     (lambda norms, c: c, "can exceed c")],
)  # fmt: skip
def test_ex3_diagnoses(answer, diagnosis, capsys):
    assert not ex3.check(answer)
    assert diagnosis in capsys.readouterr().out


def test_ex3_reference_matches_clipnorm_view():
    norms = [3.0, 0.5, 2.0, 0.1]
    view = clipnorm_view(norms, [1.0])
    assert math.isclose(matching_global_threshold(norms, 1.0), view.per_variable_norm[0])


def test_tool_runs_bench_without_the_tools(capsys):
    from clipping_lib.clip import clip_grad_norm_
    from clipping_lib.lab.parallel import make_batch, make_model
    from clipping_lib.lab.tool_runs import (
        Measurements,
        clipped_copy,
        keras_weights,
        reference_grads,
    )

    x, y = make_batch(32, seed=0)
    raw, nothing, _ = reference_grads(x, y)
    clipped, norm, model = reference_grads(x, y, lambda ps: clip_grad_norm_(ps, 1.0, eps=0.0))
    assert nothing is None and norm > 1.0
    assert torch.allclose(clipped, raw / norm.double(), rtol=1e-6)
    grads = [p.grad for p in model.parameters()]
    assert torch.allclose(clipped_copy(grads, 1.0, eps=0.0).norm(), torch.tensor(1.0).double())
    weights = keras_weights(make_model(seed=0))
    assert weights[0].shape == (8, 32) and weights[2].shape == (32, 4)
    measured = Measurements()
    assert measured.record("tool", raw, raw) == 0.0 and measured == {"tool": 0.0}
    assert "tool: relative difference 0.0e+00" in capsys.readouterr().out
