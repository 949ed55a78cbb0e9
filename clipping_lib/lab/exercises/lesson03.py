r"""Notebook 03's exercises: AMP with accumulation, Keras' ``clipnorm``, a stalled run.

* :data:`ex1` · ``amp_accumulation_step(model, micro_batches, optimizer, scaler,
  max_norm)``: float16 autocast, ``scaler.scale(loss / k).backward()`` per micro-batch,
  then unscale, clip and step once; returns the norm before clipping.
* :data:`ex2` · ``clip_per_variable_(parameters, max_norm)``: each tensor clipped to
  ``max_norm`` on its own; returns the norms before clipping.
* :data:`ex3` · ``schedule(step) -> (lr, max_norm)``: change one thing after step 100 so
  that section 5's stalled run (``lr = 0.02``, ``max_norm = 5``) converges.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from clipping_lib.clip import clip_grad_norm_, get_total_norm
from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.loops import (
    clipped_linear_run,
    flat,
    grads,
    loss_of,
    make_model,
    quadratic_geometry,
    sorted_micro_batches,
)
from clipping_lib.recipes import amp_clip_and_step

__all__ = ["LR", "MAX_NORM", "ex1", "ex2", "ex3"]

LR, MAX_NORM = 0.02, 5.0  # section 5's stalled run
_SCALE = 1024.0  # below 2048: the scaled float16 gradients do not overflow (section 6)
_STEP_LR = 0.05

# ------------------------------------------------------------------ 1 · AMP + accumulation


def amp_accumulation_step(model, micro_batches, optimizer, scaler, max_norm):
    optimizer.zero_grad()
    for x_mb, y_mb in micro_batches:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            loss = loss_of(model, x_mb, y_mb) / len(micro_batches)
        scaler.scale(loss).backward()
    return amp_clip_and_step(scaler, optimizer, model.parameters(), max_norm)


def _full_batch_norm() -> float:
    reference = make_model()
    loss_of(reference).backward()
    return get_total_norm(grads(reference)).item()


def _amp_run(answer: Callable, calls: int = 1) -> tuple[list[object], float]:
    """Call the answer ``calls`` times on one model; (what it returned, length of step 1)."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=_STEP_LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=_SCALE)
    returned, first_step = [], math.nan
    for call in range(calls):
        start = flat(model.parameters())
        returned.append(answer(model, sorted_micro_batches(4), optimizer, scaler, 1.0))
        if call == 0:
            first_step = (flat(model.parameters()) - start).norm().item()
    return returned, first_step


def _unscale_once(answer: Callable, reference: Callable) -> str | None:
    try:
        _amp_run(answer)
    except RuntimeError as error:
        if "unscale_" in str(error):
            return (
                "scaler.unscale_ was called more than once in one step (PyTorch: "
                f"'{error}'): accumulate all micro-batches first, then unscale, clip and "
                "step once."
            )
        raise
    return None


def _logs_the_true_norm(answer: Callable, reference: Callable) -> str | None:
    (logged,), _ = _amp_run(answer)
    if not isinstance(logged, Tensor | float) or isinstance(logged, bool):
        return (
            f"your function returned {type(logged).__name__}: return the norm before "
            "clipping, as clip_grad_norm_ (and amp_clip_and_step) return it."
        )
    ratio = float(logged) / _full_batch_norm()
    if abs(ratio / _SCALE - 1) < 0.02:
        return (
            f"the norm you return is {ratio:.0f} times the true one, the loss scale: you "
            "clipped the scaled gradients. Call scaler.unscale_(optimizer) before clipping."
        )
    if abs(ratio / 4 - 1) < 0.02:
        return (
            "the norm is 4 times the full batch's: the accumulated gradient is a sum, so "
            "divide each micro-batch's loss by the number of micro-batches."
        )
    if ratio < 0.9:
        return (
            f"the norm you return is {ratio:.2f} of the full batch's: return the norm before "
            "clipping, and clip once, after the last micro-batch (clipping inside the loop "
            "shrinks the early micro-batches again and again)."
        )
    if abs(ratio - 1) > 0.01:
        return f"the norm you return is {ratio:.3f} times the full batch's; expected 1 (within 1%)."
    return None


def _steps_once_clipped(answer: Callable, reference: Callable) -> str | None:
    _, step = _amp_run(answer)
    expected = _STEP_LR * 1.0
    if step == 0.0:
        return "the parameters did not move: call scaler.step(optimizer) (and scaler.update())."
    if step > 2 * expected:
        return (
            f"the step is {step:.3g} long, more than lr * max_norm = {expected}: the step "
            "used an unclipped gradient. Clip after unscale_ and before scaler.step."
        )
    if abs(step / expected - 1) > 0.02:
        return f"the step is {step:.3g} long; a clipped step is lr * max_norm = {expected}."
    return None


def _zeroes_the_gradients(answer: Callable, reference: Callable) -> str | None:
    model = make_model()
    for p in model.parameters():  # what the previous step left in .grad
        p.grad = torch.full_like(p, _SCALE)
    optimizer = torch.optim.SGD(model.parameters(), lr=_STEP_LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=_SCALE)
    logged = answer(model, sorted_micro_batches(4), optimizer, scaler, 1.0)
    if abs(float(logged) / _full_batch_norm() - 1) > 0.01:
        return (
            "with old gradients left in .grad the norm was wrong: backward() adds to .grad, "
            "so call optimizer.zero_grad() at the start."
        )
    return None


ex1 = Exercise(
    "Exercise 1 · Mixed precision and accumulation",
    amp_accumulation_step,
    [_unscale_once, _logs_the_true_norm, _steps_once_clipped, _zeroes_the_gradients],
    verified=(
        "float16 autocast over 4 micro-batches (loss scale 1024) logs the full-batch float32 "
        "norm within 1%, takes one step of lr * max_norm, and starts each step from zero "
        "gradients"
    ),
    hints=[
        "Three calls from section 6 and one from section 7: autocast the forward, "
        "scaler.scale(loss / k).backward() per micro-batch, and once at the end the AMP "
        "recipe.",
        "All micro-batches share one scale (update() runs once per step), so the scaled "
        "gradients add up correctly; unscale_ once, after the loop.",
        "The last line can be: return amp_clip_and_step(scaler, optimizer, "
        "model.parameters(), max_norm)",
    ],
)

# ------------------------------------------------------------------ 2 · per-variable clipping


def clip_per_variable_(parameters, max_norm):
    return [clip_grad_norm_(p, max_norm) for p in parameters if p.grad is not None]


def _model_with_gradients() -> torch.nn.Module:
    model = make_model()
    loss_of(model).backward()
    return model


def _each_tensor_alone(answer: Callable, reference: Callable) -> str | None:
    model, twin = _model_with_gradients(), _model_with_gradients()
    answer(list(model.parameters()), 0.3)
    reference(list(twin.parameters()), 0.3)
    got, expected = [flat([g]) for g in grads(model)], [flat([g]) for g in grads(twin)]
    original = [flat([g]) for g in grads(_model_with_gradients())]
    factors = [(g.norm() / o.norm()).item() for g, o in zip(got, original, strict=True)]
    if max(factors) - min(factors) < 1e-6 and max(factors) < 1:
        return (
            "every tensor was shrunk by the same factor: that is global clipping (one norm "
            "over all tensors). Clip each tensor with its own norm."
        )
    if all(torch.equal(g, o) for g, o in zip(got, original, strict=True)):
        return "the gradients are unchanged: clip each p.grad in place (clip_grad_norm_(p, c))."
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        if not torch.allclose(g, e, rtol=1e-6, atol=1e-9):
            return (
                f"tensor {index} ends with norm {g.norm():.4g}; clipped alone to 0.3 it "
                f"would have norm {e.norm():.4g}."
            )
    return None


def _returns_norms_before(answer: Callable, reference: Callable) -> str | None:
    model = _model_with_gradients()
    before = [get_total_norm(g).item() for g in grads(model)]
    returned = answer(list(model.parameters()), 0.3)
    if not isinstance(returned, list | tuple) or len(returned) != len(before):
        return (
            f"return a list with one norm per tensor ({len(before)} here); got "
            f"{type(returned).__name__}."
        )
    values = [float(n) for n in returned]
    if all(math.isclose(v, min(b, 0.3), rel_tol=1e-4) for v, b in zip(values, before, strict=True)):
        return "you returned the norms after clipping; return each tensor's norm before it."
    if not all(math.isclose(v, b, rel_tol=1e-5) for v, b in zip(values, before, strict=True)):
        return (
            f"the returned norms {[round(v, 4) for v in values]} are not the norms before "
            f"clipping {[round(b, 4) for b in before]}."
        )
    return None


def _one_pass_over_a_generator(answer: Callable, reference: Callable) -> str | None:
    model = make_model()
    loss_of(model).backward()
    model[2].bias.grad = None  # a parameter without a gradient: skip it
    returned = answer(model.parameters(), 0.3)  # a generator, as model.parameters() gives
    clipped = [g for g in grads(model) if g is not None]
    if any(get_total_norm(g) > 0.3 * (1 + 1e-6) for g in clipped):
        return (
            "called with model.parameters() (a generator), some tensors were not clipped: "
            "a generator can be iterated only once, so make a list before looping twice."
        )
    if len(returned) != 3:
        return (
            f"with one parameter whose .grad is None you returned {len(returned)} norms; "
            "skip parameters without a gradient (3 expected)."
        )
    return None


ex2 = Exercise(
    "Exercise 2 · Keras' clipnorm in PyTorch",
    clip_per_variable_,
    [_one_pass_over_a_generator, _each_tensor_alone, _returns_norms_before],
    verified=(
        "each of the 4 tensors clipped alone to max_norm, the norms before clipping "
        "returned, a generator and a parameter without .grad handled"
    ),
    hints=[
        "clip_grad_norm_ accepts a single tensor: clip_grad_norm_(p, max_norm) clips p.grad "
        "with p's own norm and returns it.",
        "One list comprehension over the parameters does it; skip p.grad is None.",
    ],
)

# ------------------------------------------------------------------ 3 · the stalled run


def decay_the_learning_rate(step):
    return LR * 0.99 ** max(0, step - 100), MAX_NORM


def _pair(answer: Callable, step: int) -> tuple[float, float]:
    value = answer(step)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"schedule({step}) should return (lr, max_norm), got {value!r}")
    return float(value[0]), float(value[1])


def _first_hundred_unchanged(answer: Callable, reference: Callable) -> str | None:
    for step in range(100):
        lr, max_norm = _pair(answer, step)
        if not (math.isclose(lr, LR) and math.isclose(max_norm, MAX_NORM)):
            return (
                f"schedule({step}) = ({lr:g}, {max_norm:g}): keep lr = {LR} and max_norm = "
                f"{MAX_NORM:g} for the first 100 steps, so the run starts stalled."
            )
    return None


def _one_change(answer: Callable, reference: Callable) -> str | None:
    pairs = [_pair(answer, step) for step in range(100, 400)]
    lr_moved = any(not math.isclose(lr, LR) for lr, _ in pairs)
    norm_moved = any(not math.isclose(c, MAX_NORM) for _, c in pairs)
    if lr_moved and norm_moved:
        return "you changed both the learning rate and the threshold: change one of them."
    if not (lr_moved or norm_moved):
        return "the schedule never changes anything, so the run stays stalled: change one thing."
    return None


def _converges(answer: Callable, reference: Callable) -> str | None:
    loss = clipped_linear_run(LR, MAX_NORM, 400, schedule=lambda k: _pair(answer, k))["loss"][-1]
    best = quadratic_geometry()["best_loss"]
    if not math.isfinite(loss) or loss > 1.1 * best:
        return (
            f"after 400 steps the loss is {loss:.4g}, {loss / best - 1:.0%} above the minimum "
            f"{best:.4g} (the goal: within 10%). Shrink faster, or further."
        )
    return None


ex3 = Exercise(
    "Exercise 3 · Make the stalled run converge",
    decay_the_learning_rate,
    [_first_hundred_unchanged, _one_change, _converges],
    verified=(
        "lr = 0.02 and max_norm = 5 for 100 steps, then one thing changed, and the loss "
        "after 400 steps within 10% of the minimum"
    ),
    hints=[
        "The swing across the steep direction is about lr * c / 2: shrinking either factor "
        "shrinks it.",
        "A geometric decay after step 100, for example 0.99 ** (step - 100), is enough for "
        "either factor.",
    ],
)

