r"""Lesson 08's exercises: four workers, one example's influence, and DP-SGD's noise."""

from __future__ import annotations

import math
from functools import cache

import torch

from clipping_lib.clip import clip_by_norm
from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.panels.at_scale import example_gradients
from clipping_lib.lab.parallel import ddp_clip_step
from clipping_lib.lab.workers import WorkerGroup

MAX_NORM = 0.2  # the lesson's threshold c
PER_SAMPLE_C = 3.0

__all__ = ["ex1", "ex2", "ex3", "four_worker_results", "per_rank_noise_std", "update_shifts"]


# --- Exercise 1: DDP with four workers --------------------------------------------------


@cache
def four_worker_results() -> list[dict]:
    """``ddp_clip_step`` on four gloo workers, one result per rank (run once, then cached)."""
    with WorkerGroup(4, timeout=60) as four:
        return four.run(ddp_clip_step, max_norm=MAX_NORM)


def _four_results(answer, reference) -> str | None:
    results = answer()
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return "return what group.run(...) returns: a list with one result dict per rank."
    if len(results) != 4:
        return f"you returned {len(results)} results: start the group with WorkerGroup(4)."
    return None


def _ddp_is_the_full_batch(answer, reference) -> str | None:
    results = answer()
    full = results[0]["full_norm"]
    if not all(torch.isclose(r["ddp_norm"], full, rtol=1e-4) for r in results):
        return "each rank's ddp_norm should equal the full-batch norm: did you run ddp_clip_step?"
    clipped = torch.linalg.vector_norm(results[0]["full_clipped"]).item()
    if not math.isclose(clipped, MAX_NORM, rel_tol=1e-3):
        return f"the clipped update has norm {clipped:.3g}: pass max_norm=MAX_NORM ({MAX_NORM})."
    return None


ex1 = Exercise(
    "Exercise 1 · Four workers",
    four_worker_results,
    [_four_results, _ddp_is_the_full_batch],
    verified="four ranks, each with DDP's norm equal to the full-batch norm, clipped at c",
    hints=[
        "`with WorkerGroup(4, timeout=60) as four:` starts four workers and closes them after.",
        "Inside the block, `return four.run(ddp_clip_step, max_norm=MAX_NORM)`.",
    ],
)


# --- Exercise 2: the influence of one example -------------------------------------------


def update_shifts(flat: torch.Tensor, drop: int = 28, c: float = PER_SAMPLE_C) -> tuple:
    r"""How far the update moves when example ``drop`` leaves the batch (divisor kept at B).

    ``flat`` holds one flattened gradient per example, shape ``(B, P)``. Returns
    ``(per_sample_shift, batch_shift)``: the norm of the change of
    :math:`\frac1B\sum_i \mathrm{clip}_C(g_i)` and of :math:`\mathrm{clip}_c(\frac1B\sum_i g_i)`.
    """
    batch_size = len(flat)
    keep = torch.arange(batch_size) != drop

    def per_sample(rows: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        return (rows * torch.clamp(c / norms, max=1.0)).sum(dim=0) / batch_size

    def batch(rows: torch.Tensor) -> torch.Tensor:
        return clip_by_norm(rows.sum(dim=0) / batch_size, c)

    return (
        torch.linalg.vector_norm(per_sample(flat) - per_sample(flat[keep])).item(),
        torch.linalg.vector_norm(batch(flat) - batch(flat[keep])).item(),
    )


def _the_lesson_gradients() -> torch.Tensor:
    return torch.as_tensor(example_gradients(), dtype=torch.float32)


def _per_sample_shift_dividing_by_b_minus_1(flat: torch.Tensor, drop: int = 28) -> float:
    """The common slip: the smaller batch's sum divided by B - 1 instead of B."""
    clipped = flat * torch.clamp(
        PER_SAMPLE_C / torch.linalg.vector_norm(flat, dim=1, keepdim=True), max=1.0
    )
    keep = torch.arange(len(flat)) != drop
    moved = clipped.sum(dim=0) / len(flat) - clipped[keep].sum(dim=0) / (len(flat) - 1)
    return torch.linalg.vector_norm(moved).item()


def _two_numbers(answer, reference) -> str | None:
    shifts = answer(_the_lesson_gradients())
    if not (isinstance(shifts, tuple) and len(shifts) == 2):
        return "return a pair of numbers: (per_sample_shift, batch_shift)."
    return None


def _per_sample_bound(answer, reference) -> str | None:
    flat = _the_lesson_gradients()
    per_sample, batch = (float(s) for s in answer(flat))
    expected_per_sample, expected_batch = reference(flat)
    bound = PER_SAMPLE_C / len(flat)
    if math.isclose(per_sample, expected_batch, rel_tol=1e-4) and math.isclose(
        batch, expected_per_sample, rel_tol=1e-4
    ):
        return "the two numbers are swapped: per-sample first, then batch."
    if math.isclose(per_sample, _per_sample_shift_dividing_by_b_minus_1(flat), rel_tol=1e-4):
        return "keep the divisor B = 32 when the example leaves: divide both sums by 32."
    if per_sample > bound * (1 + 1e-4):
        return (
            f"the per-sample shift {per_sample:.3g} exceeds C/B = {bound:.4f}: clip each "
            "example's gradient to norm C before you sum."
        )
    return None


def _same_shifts(answer, reference) -> str | None:
    flat = _the_lesson_gradients()
    got, expected = answer(flat), reference(flat)
    for name, g, e in zip(("per-sample", "batch"), got, expected, strict=True):
        if not math.isclose(float(g), e, rel_tol=1e-4, abs_tol=1e-7):
            return f"the {name} shift is {float(g):.4g}; expected {e:.4g}."
    return None


ex2 = Exercise(
    "Exercise 2 · The influence of one example",
    update_shifts,
    [_two_numbers, _per_sample_bound, _same_shifts],
    verified="both shifts match, and the per-sample one is at most C/B",
    hints=[
        "Build the update twice, with all 32 rows and without row `drop`, and take the norm "
        "of the difference; divide by 32 both times.",
        "Per-sample: scale each row by min(1, C / its norm), then sum and divide by 32. "
        "Batch: sum, divide by 32, then clip_by_norm(mean, c).",
    ],
)


# --- Exercise 3: DP-SGD's noise on several workers --------------------------------------


def per_rank_noise_std(sigma: float, max_norm: float, workers: int) -> float:
    r"""The noise each of ``workers`` ranks adds so that the sum has std :math:`\sigma C`.

    Independent Gaussians add their variances: :math:`W s^2 = \sigma^2 C^2` gives
    :math:`s = \sigma C/\sqrt W`.
    """
    return sigma * max_norm / math.sqrt(workers)


_NOISE_CASES = [(1.0, 3.0, 2), (0.5, 1.0, 4), (2.0, 0.1, 8)]


def _noise_std(answer, reference) -> str | None:
    for sigma, c, w in _NOISE_CASES:
        got, expected = float(answer(sigma, c, w)), reference(sigma, c, w)
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        if math.isclose(got, sigma * c, rel_tol=1e-9):
            return (
                f"with {w} workers each adding sigma*C, the total's std is sqrt({w}) * sigma*C: "
                "more noise than the privacy analysis asked for. Scale each rank's share down."
            )
        if math.isclose(got, sigma * c / w, rel_tol=1e-9):
            return "standard deviations do not add, variances do: divide by sqrt(W), not by W."
        return f"for sigma={sigma}, C={c}, W={w} you gave {got:.4g}; expected {expected:.4g}."
    return None


ex3 = Exercise(
    "Exercise 3 · Per-sample clipping on several workers",
    per_rank_noise_std,
    [_noise_std],
    verified="each rank's noise std gives a total of exactly sigma*C, for W = 2, 4 and 8",
    hints=[
        "The ranks' noises are independent, so their variances add up.",
        "W ranks adding std s give a total std of sqrt(W) * s; set it equal to sigma * C.",
    ],
)
