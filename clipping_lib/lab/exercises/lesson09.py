r"""Exercises of notebook 09 (clipping in modern training): references and diagnosing checks.

* :data:`ex1` -- a threshold from measured norms: the :math:`(1-r)` quantile of the norms
  after warm-up clips a fraction :math:`r` of those steps.
* :data:`ex2` -- how long a spike's shadow lasts: after a spike, :math:`\sum v` decays by
  :math:`\beta_2` per step, so it falls by a factor :math:`e` every
  :math:`-1/\ln\beta_2 \approx 1/(1-\beta_2)` steps.
* :data:`ex3` -- a verdict across seeds: method A beats method B at a learning rate only if
  it ends lower on *every* seed, not on average.
* :data:`ex4` -- one step of the modern recipe: zero the gradients, forward under bf16
  autocast, backward, ``clip_grad_norm_(..., 1.0)``, step. :func:`time_recipe` times it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.exercises._core import Exercise, tensor_mismatch
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.threads import single_thread

__all__ = [
    "clip_threshold",
    "efold_steps",
    "ex1",
    "ex2",
    "ex3",
    "ex4",
    "recipe_step",
    "time_recipe",
    "wins_on_every_seed",
]


# ---------------------------------------------------------------- Exercise 1 · a threshold
def clip_threshold(norms: np.ndarray, warmup: int, rate: float = 0.05) -> tuple[float, np.ndarray]:
    """The threshold that clips a fraction ``rate`` of the steps after warm-up, and the
    (absolute) numbers of the steps it clips."""
    settled = np.asarray(norms)[warmup:]
    threshold = float(np.percentile(settled, 100 * (1 - rate)))
    return threshold, warmup + np.flatnonzero(settled > threshold)


def _norms_case(seed: int) -> tuple[np.ndarray, int]:
    """A run's norms: a high warm-up, then a lognormal bulk with a few spikes."""
    rng = np.random.default_rng(seed)
    warmup, steps = 12, 120
    norms = np.exp(rng.normal(-0.7, 0.3, steps))
    norms[:warmup] = np.linspace(4.0, 1.0, warmup)  # the warm-up: every step large
    norms[rng.choice(np.arange(warmup, steps), 4, replace=False)] *= 6  # spikes
    return norms, warmup


def _ex1_shape(answer, reference) -> str | None:
    norms, warmup = _norms_case(0)
    result = answer(norms.copy(), warmup, 0.05)
    if not (isinstance(result, tuple) and len(result) == 2):
        return "return two things, `(threshold, steps)`: the number and the clipped steps."
    return None


def _ex1_threshold(answer, reference) -> str | None:
    for seed, rate in ((0, 0.05), (1, 0.2)):
        norms, warmup = _norms_case(seed)
        got = float(answer(norms.copy(), warmup, rate)[0])
        expected = reference(norms, warmup, rate)[0]
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        settled = norms[warmup:]
        if math.isclose(got, np.percentile(norms, 100 * (1 - rate)), rel_tol=1e-9):
            return (
                "the threshold includes the warm-up steps: take the norms after warm-up, "
                "`norms[warmup:]`, whose scale is the one the threshold must fit."
            )
        if math.isclose(got, np.percentile(settled, 100 * rate), rel_tol=1e-9):
            return (
                f"you took the {100 * rate:g}th percentile, which clips {1 - rate:.0%} of "
                f"the steps: the threshold that clips a fraction `rate` is the "
                f"{100 * (1 - rate):g}th percentile."
            )
        if math.isclose(got, np.percentile(settled, 1 - rate), rel_tol=1e-9):
            return (
                "np.percentile takes a percentage (0 to 100), not a fraction: "
                "`np.percentile(x, 100 * (1 - rate))`."
            )
        if rate != 0.05 and math.isclose(got, np.percentile(settled, 95), rel_tol=1e-9):
            return (
                "with rate=0.2 you still returned the 95th percentile: use the argument, "
                "`100 * (1 - rate)`."
            )
        return (
            f"the threshold is off: for rate={rate} you returned {got:.4g}, expected "
            f"{expected:.4g} (the {100 * (1 - rate):g}th percentile after warm-up)."
        )
    return None


def _ex1_steps(answer, reference) -> str | None:
    norms, warmup = _norms_case(2)
    threshold, steps = answer(norms.copy(), warmup, 0.05)
    expected = reference(norms, warmup, 0.05)[1]
    steps = np.asarray(steps)
    if np.array_equal(steps, expected):
        return None
    if np.array_equal(steps, expected - warmup):
        return (
            "the step numbers are counted from the end of the warm-up: add `warmup` "
            "to turn positions in `norms[warmup:]` into step numbers."
        )
    if np.array_equal(steps, np.flatnonzero(norms > threshold)):
        return (
            "your steps include warm-up steps: list only the steps after warm-up "
            "whose norm is above the threshold."
        )
    if steps.dtype == bool:
        return "return the step numbers (np.flatnonzero of the mask), not a boolean mask."
    return (
        f"the clipped steps are off: you returned {steps.tolist()}, expected {expected.tolist()}."
    )


ex1 = Exercise(
    "Exercise 1 · A threshold from the measured norms",
    clip_threshold,
    [_ex1_shape, _ex1_threshold, _ex1_steps],
    verified=(
        "the threshold is the (1 - rate) quantile of the norms after warm-up, for rates "
        "0.05 and 0.2, and the clipped steps are numbered from the run's start"
    ),
    hints=[
        "The warm-up's norms are on another scale: look at `norms[warmup:]` only.",
        "A threshold that clips 5% of the steps leaves 95% below it: a percentile.",
        "`np.percentile(settled, 100 * (1 - rate))`; the steps are "
        "`warmup + np.flatnonzero(settled > threshold)`.",
    ],
)


# ------------------------------------------------------- Exercise 2 · a spike's shadow
def efold_steps(v_sum: np.ndarray, spike_at: int) -> float:
    """Steps per factor ``e`` by which ``v_sum`` decays from the spike to the last step."""
    v_sum = np.asarray(v_sum, dtype=np.float64)
    steps = len(v_sum) - 1 - spike_at
    return steps / math.log(v_sum[spike_at] / v_sum[-1])


def _decay_case(beta2: float, steps: int = 60, spike_at: int = 30) -> np.ndarray:
    """``sum v`` of a run with one spike: flat before it, then a pure decay by ``beta2``."""
    t = np.arange(steps)
    return np.where(t < spike_at, 1.0, 500.0 * beta2 ** (t - spike_at).clip(min=0))


def _ex2_value(answer, reference) -> str | None:
    for beta2 in (0.95, 0.99):
        v_sum = _decay_case(beta2)
        got = answer(v_sum.copy(), 30)
        if isinstance(got, np.ndarray | Tensor) and got.ndim == 0:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, float | int | np.floating):
            return f"return a number (steps per factor e), not a {type(got).__name__}."
        got, expected = float(got), reference(v_sum, 30)
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        if got < 0:
            return (
                "your answer is negative: the ratio is upside down. v decays, so "
                "v[spike_at] / v[-1] > 1 and its log is positive."
            )
        if math.isclose(got, expected * math.log(10), rel_tol=1e-6):
            return "you used log10: a factor e needs the natural log, `math.log` or `np.log`."
        if math.isclose(got, 1 / expected, rel_tol=1e-6):
            return (
                "you returned the decay rate per step (log-ratio / steps); the question "
                "asks for its inverse, steps per factor e."
            )
        for steps in (len(v_sum) - 30, len(v_sum) - 32):  # the spike is at step 30
            if math.isclose(got, expected * steps / (len(v_sum) - 31), rel_tol=1e-6):
                return (
                    "off by one step: from the spike (index spike_at) to the last index "
                    "len(v_sum) - 1 there are len(v_sum) - 1 - spike_at steps."
                )
        return (
            f"for a decay by beta2 = {beta2} per step the answer is {expected:.2f} steps "
            f"(-1 / ln beta2); you returned {got:.4g}."
        )
    return None


ex2 = Exercise(
    "Exercise 2 · How long a spike's shadow lasts",
    efold_steps,
    [_ex2_value],
    verified=(
        "on a pure decay by beta2 = 0.95 and 0.99 it returns -1 / ln(beta2) steps per "
        "factor e (19.5 and 99.5)"
    ),
    hints=[
        "Between the spike and the last step, v falls by the ratio v[spike_at] / v[-1].",
        "A fall by a factor e is one unit of natural log: count the log's units.",
        "`(len(v_sum) - 1 - spike_at) / math.log(v_sum[spike_at] / v_sum[-1])`.",
    ],
)


# ------------------------------------------------------- Exercise 3 · every seed
def wins_on_every_seed(table: np.ndarray, a: int, b: int) -> np.ndarray:
    """Per learning rate (rows of ``table``, shape ``(lrs, methods, seeds)``): whether
    method ``a`` ends with a lower loss than method ``b`` on every seed."""
    return np.all(table[:, a] < table[:, b], axis=-1)


def _seed_table() -> np.ndarray:
    """Losses ``(4 lrs, 2 methods, 5 seeds)`` built so each mistake gives another answer."""
    a = np.array(
        [
            [2.60, 2.61, 2.62, 2.63, 2.64],  # lr 0: a lower on every seed
            [2.50, 2.50, 2.50, 2.50, 2.95],  # lr 1: a lower on average, not on every seed
            [2.80, 2.80, 2.80, 2.80, 2.70],  # lr 2: b lower on average, a lower on one seed
            [3.10, 3.10, 3.10, 3.10, 3.10],  # lr 3: b lower on every seed
        ]
    )
    b = np.array(
        [
            [2.70, 2.70, 2.70, 2.70, 2.70],
            [2.60, 2.60, 2.60, 2.60, 2.60],
            [2.75, 2.75, 2.75, 2.75, 2.75],
            [3.00, 3.00, 3.00, 3.00, 3.00],
        ]
    )
    return np.stack([a, b], axis=1)


def _ex3_value(answer, reference) -> str | None:
    table = _seed_table()
    got = np.asarray(answer(table.copy(), 0, 1))
    expected = reference(table, 0, 1)
    if got.shape != expected.shape:
        return (
            f"the result has shape {got.shape}; expected one entry per learning rate, "
            f"shape {expected.shape}: reduce over the seed axis (the last), not another."
        )
    got = got.astype(bool)
    if np.array_equal(got, expected):
        return None
    if np.array_equal(got, table[:, 0].mean(-1) < table[:, 1].mean(-1)):
        return (
            "you compared the means over seeds: a lower mean can hide a seed on which "
            "the other method wins. Ask for every seed: `np.all(..., axis=-1)`."
        )
    if np.array_equal(got, np.any(table[:, 0] < table[:, 1], axis=-1)):
        return "you asked whether a wins on *some* seed (np.any); the question is every seed."
    if np.array_equal(got, np.all(table[:, 0] > table[:, 1], axis=-1)):
        return "the comparison is reversed: a beats b where a's loss is *lower*."
    return f"you returned {got.tolist()}; expected {expected.tolist()} on the exercise's table."


ex3 = Exercise(
    "Exercise 3 · A verdict on every seed",
    wins_on_every_seed,
    [_ex3_value],
    verified=(
        "on a table where the mean, any seed and every seed disagree, it answers "
        "'lower on every seed', one entry per learning rate"
    ),
    hints=[
        "`table[:, a]` has shape (lrs, seeds): one loss per learning rate and seed.",
        "Compare elementwise, then reduce over the seeds with np.all.",
        "`np.all(table[:, a] < table[:, b], axis=-1)`.",
    ],
)


# ------------------------------------------------------- Exercise 4 · the recipe's step
def recipe_step(
    model: GPT, optimizer: torch.optim.Optimizer, ids: Tensor, targets: Tensor, autocast: bool
) -> Tensor:
    """One step of the recipe; returns the loss (a tensor, no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(ids, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


_CHECK_CONFIG = (16, 16, 1, 2)  # context, width, layers, heads: a tiny GPT, a fast check


def _variant_step(model, optimizer, ids, targets, autocast, *, zero=True, clip=True):
    """The recipe's step with one part left out: what a typical mistake computes."""
    if zero:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(ids, targets)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


def _updates(step: Callable, autocast: bool, *, steps: int = 2) -> tuple[Tensor, list]:
    """The weights' total change after ``steps`` calls of ``step`` (SGD, so the update is
    linear in the gradient and every part of the step shows), and the returned losses."""
    corpus = _check_corpus()
    context, width, layers, heads = _CHECK_CONFIG
    model = GPT(GPTConfig(corpus.vocab_size, context, width, layers, heads), seed=0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids, targets = corpus.batches(steps, 4, context, seed=0)
    with single_thread():
        losses = [step(model, optimizer, ids[i], targets[i], autocast) for i in range(steps)]
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before, losses


def _check_corpus() -> CharCorpus:
    """A small text, enough for a check's two batches (the course's corpus loads slower)."""
    return CharCorpus.from_text("def clip(g, c):\n    return g * min(1, c / norm(g))\n" * 40)


def _ex4_returns_tensor(answer, reference) -> str | None:
    _, losses = _updates(answer, True, steps=1)
    if not isinstance(losses[0], Tensor):
        kind = type(losses[0]).__name__
        return (
            f"return the loss as a tensor (`loss.detach()`), not a {kind}: calling "
            ".item() in the loop waits for the device on every step."
        )
    return None


def _ex4_loss(answer, reference) -> str | None:
    _, losses = _updates(answer, True, steps=1)
    _, expected = _updates(reference, True, steps=1)
    return tensor_mismatch(losses[0].float(), expected[0].float(), "the returned loss", 1e-6, 0)


def _ex4_update(answer, reference) -> str | None:
    mistakes = {
        "clip": (
            "the update used the unclipped gradient: call "
            "`clip_grad_norm_(model.parameters(), 1.0)` after backward() and before "
            "optimizer.step()."
        ),
        "zero": (
            "the gradients accumulate from one step to the next: call "
            "`optimizer.zero_grad()` at the start of every step."
        ),
        "fp32": (
            "with autocast=True the forward pass ran in float32: wrap the loss in "
            "`torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast)`."
        ),
        "bf16": (
            "with autocast=False the forward pass still ran in bfloat16: pass "
            "`enabled=autocast` to torch.autocast."
        ),
    }
    for autocast in (True, False):
        got = _updates(answer, autocast)[0]
        expected = _updates(reference, autocast)[0]
        if tensor_mismatch(got, expected, "", rtol=1e-4, atol=1e-9) is None:
            continue
        if not got.abs().max() > 0:
            return (
                "the weights did not move: optimizer.step() must see the gradients "
                "(zero them before backward(), not between backward() and step())."
            )
        variants = {
            "clip": lambda *a: _variant_step(*a, clip=False),
            "zero": lambda *a: _variant_step(*a, zero=False),
            "fp32" if autocast else "bf16": lambda m, o, i, t, on: _variant_step(
                m, o, i, t, not on
            ),
        }
        for name, variant in variants.items():
            if tensor_mismatch(got, _updates(variant, autocast)[0], "", 1e-4, 1e-9) is None:
                return mistakes[name]
        return tensor_mismatch(
            got, expected, f"the weights' update (autocast={autocast})", 1e-4, 1e-9
        )
    return None


ex4 = Exercise(
    "Exercise 4 · One step of the recipe",
    recipe_step,
    [_ex4_returns_tensor, _ex4_update, _ex4_loss],
    verified=(
        "two steps on a tiny GPT update the weights as zero_grad, bf16 autocast "
        "(only when asked), backward, clip_grad_norm_(..., 1.0) and step do, and the "
        "loss comes back as a tensor"
    ),
    hints=[
        "The order: zero the gradients, forward, backward, clip, step.",
        "`torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast)` around the loss "
        "only; backward() runs outside it.",
        "Return `loss.detach()`: a tensor, no .item() in the loop.",
    ],
)


def time_recipe(
    step: Callable, corpus: CharCorpus, config: GPTConfig, autocast: bool, n: int = 20
) -> float:
    """Seconds per call of ``step`` (the recipe's step) on ``GPT(config)``, batch 8, after
    one warm-up call: a measurement of this machine, under its current load."""
    model = GPT(config, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    ids, targets = corpus.batches(n + 1, 8, config.context, seed=0)
    with single_thread():
        step(model, optimizer, ids[0], targets[0], autocast)
        start = time.perf_counter()
        for i in range(1, n + 1):
            step(model, optimizer, ids[i], targets[i], autocast)
        return (time.perf_counter() - start) / n
