"""Notebook 09's exercise checkers: each passes its reference, names each typical mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab.exercises.lesson09 import ex1, ex2, ex3, ex4, recipe_step, time_recipe
from clipping_lib.lab.gpt import GPTConfig


# Exercise 1 -------------------------------------------------------------------------------
def with_warmup(norms, warmup, rate=0.05):
    threshold = float(np.percentile(norms, 100 * (1 - rate)))
    return threshold, warmup + np.flatnonzero(norms[warmup:] > threshold)


def low_percentile(norms, warmup, rate=0.05):
    settled = norms[warmup:]
    threshold = float(np.percentile(settled, 100 * rate))
    return threshold, warmup + np.flatnonzero(settled > threshold)


def fraction_not_percent(norms, warmup, rate=0.05):
    settled = norms[warmup:]
    threshold = float(np.percentile(settled, 1 - rate))
    return threshold, warmup + np.flatnonzero(settled > threshold)


def relative_steps(norms, warmup, rate=0.05):
    settled = norms[warmup:]
    threshold = float(np.percentile(settled, 100 * (1 - rate)))
    return threshold, np.flatnonzero(settled > threshold)


def fixed_95(norms, warmup, rate=0.05):
    settled = norms[warmup:]
    threshold = float(np.percentile(settled, 95))
    return threshold, warmup + np.flatnonzero(settled > threshold)


@pytest.mark.parametrize(
    "answer, message",
    [
        (with_warmup, "includes the warm-up steps"),
        (low_percentile, "clips 95% of the steps"),
        (fraction_not_percent, "takes a percentage"),
        (relative_steps, "add `warmup`"),
        (fixed_95, "use the argument"),
        (lambda norms, warmup, rate=0.05: 1.0, "return two things"),
    ],
)
def test_ex1_names_the_mistake(answer, message, capsys):
    assert not ex1.check(answer)
    out = capsys.readouterr().out
    assert out.startswith("✗") and message in out, out


# Exercise 2 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda v, s: (len(v) - 1 - s) / math.log10(v[s] / v[-1]), "log10"),
        (lambda v, s: (len(v) - 1 - s) / math.log(v[-1] / v[s]), "upside down"),
        (lambda v, s: (len(v) - s) / math.log(v[s] / v[-1]), "off by one"),
        (lambda v, s: math.log(v[s] / v[-1]) / (len(v) - 1 - s), "its inverse"),
        (lambda v, s: np.array([1.0, 2.0]), "return a number"),
    ],
)
def test_ex2_names_the_mistake(answer, message, capsys):
    assert not ex2.check(answer)
    out = capsys.readouterr().out
    assert message in out, out


def test_ex2_reference_is_one_over_one_minus_beta2_roughly():
    t = np.arange(60)
    v = np.where(t < 30, 1.0, 500.0 * 0.95 ** (t - 30).clip(min=0))
    assert ex2.reference(v, 30) == pytest.approx(-1 / math.log(0.95))
    assert abs(ex2.reference(v, 30) - 1 / (1 - 0.95)) < 1


# Exercise 3 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda t, a, b: t[:, a].mean(-1) < t[:, b].mean(-1), "compared the means"),
        (lambda t, a, b: np.any(t[:, a] < t[:, b], axis=-1), "*some* seed"),
        (lambda t, a, b: np.all(t[:, a] > t[:, b], axis=-1), "reversed"),
        (lambda t, a, b: np.all(t[:, a] < t[:, b], axis=0), "seed axis"),
    ],
)
def test_ex3_names_the_mistake(answer, message, capsys):
    assert not ex3.check(answer)
    out = capsys.readouterr().out
    assert message in out, out


# Exercise 4 -------------------------------------------------------------------------------
def forward(model, ids, targets, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model.loss(ids, targets)


def no_zero_grad(model, optimizer, ids, targets, autocast):
    loss = forward(model, ids, targets, autocast)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


def clip_after_step(model, optimizer, ids, targets, autocast):
    optimizer.zero_grad()
    loss = forward(model, ids, targets, autocast)
    loss.backward()
    optimizer.step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    return loss.detach()


def always_float32(model, optimizer, ids, targets, autocast):
    return recipe_step(model, optimizer, ids, targets, False)


def always_bf16(model, optimizer, ids, targets, autocast):
    return recipe_step(model, optimizer, ids, targets, True)


def returns_item(model, optimizer, ids, targets, autocast):
    return recipe_step(model, optimizer, ids, targets, autocast).item()


def zero_between(model, optimizer, ids, targets, autocast):
    loss = forward(model, ids, targets, autocast)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize(
    "answer, message",
    [
        (no_zero_grad, "accumulate"),
        (clip_after_step, "unclipped gradient"),
        (always_float32, "ran in float32"),
        (always_bf16, "still ran in bfloat16"),
        (returns_item, "as a tensor"),
        (zero_between, "did not move"),
    ],
)
def test_ex4_names_the_mistake(answer, message, capsys):
    assert not ex4.check(answer)
    out = capsys.readouterr().out
    assert message in out, out


def test_time_recipe_returns_seconds_per_step():
    from clipping_lib.lab.corpus import CharCorpus

    corpus = CharCorpus.from_text("abcdefgh" * 200)
    config = GPTConfig(corpus.vocab_size, context=8, width=8, layers=1, heads=2)
    seconds = time_recipe(recipe_step, corpus, config, autocast=False, n=2)
    assert math.isfinite(seconds) and seconds > 0
