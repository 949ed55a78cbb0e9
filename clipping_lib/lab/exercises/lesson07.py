r"""Exercises of notebook 07 (adaptive clipping and monitoring): checks that diagnose.

* ``ex1``: ``quiet_threshold(norms, steps=50, factor=5.0)``, a fixed threshold from a
  stretch measured before any spike: ``factor`` times the median of the first ``steps``
  norms.
* ``ex2``: ``readout_step(clipper, step)``, how far one SGD step moves the readout weight
  of notebook 07's ``TanhRNN`` at its initial weights, relative to that weight's norm.
* ``ex3``: ``answer``, a percentile ``p`` for AutoClip with SGD on notebook 07's run:
  checked on the monitored norms for its clip rate, whether every spike is clipped, and
  the threshold at each spike against the typical norm.

The notebook's data (the spiky adding task of seed 0, its first ``WATCH`` norms with
``NormClip(1.0)``) is rebuilt here on first use and kept.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np
import torch

from clipping_lib.adaptive import AGC
from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.panels.adaptive import RUN, STEPS, recorded_norms, replay
from clipping_lib.lab.spikes import spiky_adding_task
from clipping_lib.lab.stacked import ExceptReadout
from clipping_lib.lab.training import TanhRNN, task_loss

__all__ = ["ex1", "ex2", "ex3"]


# --- Exercise 1 · A threshold from a quiet stretch -----------------------------------------


def quiet_threshold(norms: np.ndarray, steps: int = 50, factor: float = 5.0) -> float:
    return factor * float(np.median(norms[:steps]))


def _number(got: Any) -> str | None:
    if isinstance(got, bool) or not isinstance(got, (numbers.Real, np.floating)):
        if isinstance(got, (np.ndarray, torch.Tensor)) and got.size not in (1, ()):
            return "return one number (a float), not an array: the threshold c."
        if not isinstance(got, (np.ndarray, torch.Tensor)):
            return f"return one number (a float), not a {type(got).__name__}."
    return None


_QUIET = np.concatenate([np.linspace(0.5, 1.5, 50), np.linspace(2.0, 3.0, 50)])
_QUIET[7] = 400.0  # one spike inside the first 50 steps


def _is_a_number(answer, reference) -> str | None:
    return _number(answer(_QUIET.copy(), 50, 5.0))


def _first_steps_median(answer, reference) -> str | None:
    got = float(answer(_QUIET.copy(), 50, 5.0))
    expected = reference(_QUIET, 50, 5.0)
    if math.isclose(got, expected, rel_tol=1e-9):
        return None
    wrong = {
        5.0 * float(np.mean(_QUIET[:50])): (
            "you took the mean: one spike in the stretch (here a norm of 400) pulls it far "
            "up; the median ignores it."
        ),
        5.0 * float(np.median(_QUIET)): (
            "you took the median of every norm: use only the first `steps` norms, measured "
            "before the first spike."
        ),
        5.0 * float(np.median(_QUIET[-50:])): (
            "you took the last `steps` norms: the quiet stretch is the first `steps`."
        ),
        5.0 * float(np.median(_QUIET[:51])): "you used steps + 1 norms: norms[:steps] is enough.",
        5.0 * float(np.median(_QUIET[:49])): "you used steps - 1 norms: take norms[:steps].",
        float(np.median(_QUIET[:50])): "off by the factor: multiply the median by `factor`.",
    }
    for value, message in wrong.items():
        if math.isclose(got, value, rel_tol=1e-9):
            return message
    return f"on a test stretch the threshold should be {expected:.4g}, got {got:.4g}."


def _uses_its_arguments(answer, reference) -> str | None:
    norms = np.geomspace(0.1, 10.0, 80)
    got, expected = float(answer(norms, 20, 3.0)), reference(norms, 20, 3.0)
    if not math.isclose(got, expected, rel_tol=1e-9):
        return (
            f"with steps=20 and factor=3 the threshold should be {expected:.4g}, got "
            f"{got:.4g}: use the arguments, not fixed numbers."
        )
    return None


ex1 = Exercise(
    "Exercise 1 · A threshold from a quiet stretch",
    quiet_threshold,
    [_is_a_number, _first_steps_median, _uses_its_arguments],
    verified="factor × the median of the first `steps` norms, unmoved by a spike among them",
    hints=[
        "Which statistic of 50 numbers does one huge value not move?",
        "np.median(norms[:steps]), times factor; return a float.",
    ],
)


# --- Exercise 2 · What one spike does to the readout ---------------------------------------


task, spike_steps = spiky_adding_task(STEPS, RUN["batch_size"], seed=0)  # the notebook's


def readout_step(clipper, step: int) -> float:
    model = TanhRNN(task.input_size, RUN["hidden_size"], task.output_size, seed=0)
    inputs, targets = task.batch(step, RUN["batch_size"])
    task_loss(task, model(inputs), targets).backward()
    clipper(list(model.parameters()))
    weight = model.readout.weight
    return RUN["lr"] * (weight.grad.norm() / weight.norm()).item()


def _readout_variants(step: int) -> dict[str, float]:
    """Quantities a wrong answer may have returned instead, on batch ``step``."""
    model = TanhRNN(task.input_size, RUN["hidden_size"], task.output_size, seed=0)
    inputs, targets = task.batch(step, RUN["batch_size"])
    task_loss(task, model(inputs), targets).backward()
    weight = model.readout.weight
    whole = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    return {"unclipped": RUN["lr"] * (weight.grad.norm() / weight.norm()).item(),
            "whole": RUN["lr"] * whole / weight.norm().item(),
            "weight_norm": weight.norm().item()}  # fmt: skip


def _readout_matches(answer, reference) -> str | None:
    step = int(spike_steps[0])  # the first spike batch
    for make, name in ((lambda: AGC(0.05), "AGC(0.05)"),
                       (lambda: ExceptReadout(AGC(0.05)), "ExceptReadout(AGC(0.05))")):  # fmt: skip
        got, expected = answer(make(), step), reference(make(), step)
        message = _number(got)
        if message:
            return message
        got = float(got)
        if math.isclose(got, expected, rel_tol=1e-4):
            continue
        variants = _readout_variants(step)
        if math.isclose(got, variants["unclipped"], rel_tol=1e-4):
            return (
                f"with {name} you returned the unclipped step: call the clipper on the "
                "model's parameters after backward() and before you read the gradient."
            )
        if math.isclose(got, expected / RUN["lr"], rel_tol=1e-4):
            return "off by a factor 10: one SGD step moves the weight by lr × gradient, lr = 0.1."
        if math.isclose(got, expected * variants["weight_norm"], rel_tol=1e-4):
            return (
                "you returned how far the weight moved, not relative to its norm: divide by "
                "‖readout.weight‖."
            )
        if math.isclose(got, variants["whole"], rel_tol=1e-2):
            return (
                "you used the gradient of every parameter: the question is about "
                "readout.weight alone (model.readout.weight.grad)."
            )
        return f"with {name} on the first spike batch expected {expected:.4g}, got {got:.4g}."
    return None


ex2 = Exercise(
    "Exercise 2 · What one spike does to the readout",
    readout_step,
    [_readout_matches],
    verified="the readout's relative step on the first spike batch, with AGC(0.05) on every "
    "parameter and with the readout left out",
    hints=[
        "A fresh TanhRNN(task.input_size, 16, task.output_size, seed=0) per call; one "
        "backward on task.batch(step, 32); then the clipper on its parameters.",
        "Return RUN['lr'] * ‖readout.weight.grad‖ / ‖readout.weight‖ as a float.",
    ],
)


# --- Exercise 3 · AutoClip's percentile with SGD -------------------------------------------

AUTOCLIP_P = 95.0


@functools.cache
def _monitored() -> tuple[np.ndarray, np.ndarray]:
    return recorded_norms(seed=0)


def _percentile_works(answer, reference) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real) or not 0 < answer <= 100:
        return f"answer is a percentile p with 0 < p <= 100, got {answer!r}."
    norms, spikes = _monitored()
    replayed = replay(norms, "AutoClip", percentile=float(answer))
    typical = float(np.median(norms))
    ratio = replayed.threshold[spikes] / typical
    if ratio.max() > 10:
        return (
            f"at p = {answer:g} the threshold at a spike is {ratio.max():.0f}× the typical norm: "
            "the spikes are more than 100 - p % of the history, so the percentile is itself "
            "a spike and the 'clipped' spike passes almost whole. Lower p."
        )
    if not replayed.clipped[spikes].all():
        return f"at p = {answer:g} some spike is not clipped at all: lower p."
    if replayed.clip_rate > 0.2:
        return (
            f"at p = {answer:g} AutoClip clips {replayed.clip_rate:.0%} of the steps: with SGD "
            "that is a cut of the learning rate (section 2), not a safety net. Raise p."
        )
    return None


ex3 = Exercise(
    "Exercise 3 · AutoClip's percentile with SGD",
    AUTOCLIP_P,
    [_percentile_works],
    verified="clips under 20 % of the monitored steps, every spike among them, each to at "
    "most 10× the typical norm",
    hints=[
        "Replay a few values with replay(fixed.grad_norm, 'AutoClip', percentile=p) and "
        "print the clip rate and replayed.threshold[watched] / median norm.",
        "Keep 100 - p well above the share of steps that spike (here about 2 %), and the "
        "clip rate a few percent.",
    ],
)
