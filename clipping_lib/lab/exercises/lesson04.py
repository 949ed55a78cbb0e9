r"""Exercises of notebook 04 (clipping written by hand): checks that diagnose.

* ``ex1``: ``my_clip_by_norm(g, c)``, exact norm clipping of one tensor,
  :math:`g\,c/\max(\lVert g\rVert_2, c)`, returned as a new tensor.
* ``ex2``: ``my_clip_global_(parameters, max_norm)``, PyTorch-style global clipping in
  place, with no host sync.
* ``ex3``: ``my_total_inf_norm(tensors)``, the largest absolute element over all tensors.
* ``ex4``: ``loop_overhead(size)``, the naive loop's host syncs and its time relative to
  PyTorch on 100 tensors of ``size x size`` (open-ended: the count is checked, the time
  only for being a ratio).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from clipping_lib.clip import clip_grad_norm_, get_total_norm
from clipping_lib.lab.exercises._core import Exercise, tensor_mismatch
from clipping_lib.lab.manual import gradient_set, host_syncs, naive_clip_grad_norm_, time_clippers

__all__ = ["ex1", "ex2", "ex3", "ex4"]


# --- Exercise 1 · Norm clipping of one tensor, exact --------------------------------------


def my_clip_by_norm(g: torch.Tensor, c: float) -> torch.Tensor:
    return g * (c / torch.clamp(torch.linalg.vector_norm(g), min=c))


def _input_untouched(answer, reference) -> str | None:
    g = torch.tensor([3.0, 4.0])
    answer(g, 1.0)
    if not torch.equal(g, torch.tensor([3.0, 4.0])):
        return "your function changed its input: return a new tensor (g * factor), not g.mul_."
    return None


def _new_tensor(answer, reference) -> str | None:
    g = torch.tensor([0.3, 0.4])
    if answer(g, 1.0) is g:
        return (
            "you returned the input tensor itself when nothing was clipped: return a new "
            "tensor every time (g * factor makes one)."
        )
    return None


def _exact_below_threshold(answer, reference) -> str | None:
    g = torch.tensor([0.3, 0.4], dtype=torch.float64)  # norm 0.5 < c = 1
    got = answer(g, 1.0)
    if isinstance(got, torch.Tensor) and got.shape == g.shape and not torch.equal(got, g):
        norm = torch.linalg.vector_norm(got).item()
        if math.isclose(norm, 1.0, rel_tol=1e-6):
            return (
                "you rescaled a gradient of norm 0.5 up to c = 1: clipping only shrinks, "
                "the factor is c / max(‖g‖, c), so below c it is exactly 1."
            )
        return (
            "gradients below the threshold were changed: below c the gradient passes "
            f"through exactly (g = [0.3, 0.4], c = 1 came back as {got.tolist()})."
        )
    return None


def _same_direction(answer, reference) -> str | None:
    g = torch.tensor([3.0, 0.5], dtype=torch.float64)
    got = answer(g, 1.0)
    if isinstance(got, torch.Tensor) and torch.equal(got, g.clamp(-1.0, 1.0)):
        return (
            "you clipped each coordinate to [-c, c] (value clipping): norm clipping "
            "multiplies the whole vector by one factor, c / max(‖g‖, c)."
        )
    return None


def _no_eps(answer, reference) -> str | None:
    g = torch.tensor([30.0, 40.0], dtype=torch.float64)  # norm 50
    got = answer(g, 1.0)
    if isinstance(got, torch.Tensor) and got.shape == g.shape:
        norm = torch.linalg.vector_norm(got).item()
        if math.isclose(norm, 50 / (50 + 1e-6), rel_tol=1e-12):
            return (
                "you used PyTorch's ε (c / (‖g‖ + 1e-6)): this exercise asks for exact "
                "clipping, c / max(‖g‖, c), so a clipped norm is c itself."
            )
    return None


def _same_values(answer, reference) -> str | None:
    generator = torch.Generator().manual_seed(1)
    for scale in (0.01, 1.0, 100.0):
        g = torch.randn(300, generator=generator) * scale
        what = f"my_clip_by_norm(g, 2.0) for a g of norm {torch.linalg.vector_norm(g):.3g}"
        message = tensor_mismatch(answer(g, 2.0), reference(g, 2.0), what, rtol=1e-6, atol=0)
        if message:
            return message
    return None


ex1 = Exercise(
    "Exercise 1 · Norm clipping of one tensor, exact",
    my_clip_by_norm,
    [_input_untouched, _new_tensor, _same_direction, _exact_below_threshold, _no_eps, _same_values],
    verified=(
        "input untouched, a new tensor returned, exact below c, clipped norm exactly c "
        "(no ε), equal to the reference on random tensors of scale 0.01, 1 and 100"
    ),
    hints=[
        "One factor for the whole tensor: c / max(‖g‖, c). torch.linalg.vector_norm(g) gives ‖g‖.",
        "max(‖g‖, c) as a tensor is torch.clamp(norm, min=c): no .item(), no if.",
    ],
)


# --- Exercise 2 · The global version, without host syncs ----------------------------------


def my_clip_global_(parameters, max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(norms)
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor)
    return total


def _param_set(seed: int, grad_none: tuple[int, ...] = ()) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for index, shape in enumerate([(8, 4), (4,), (16, 8), (8,)]):
        p = torch.nn.Parameter(torch.zeros(shape))
        if index not in grad_none:
            p.grad = torch.randn(shape, generator=generator) * (1 + 3 * index)
        params.append(p)
    return params


def _no_host_sync(answer, reference) -> str | None:
    count = host_syncs(answer, gradient_set(20, 8))
    if count:
        return (
            f"{count} host sync{'s' if count > 1 else ''} counted, expected 0: keep the norm "
            "and the factor as tensors (no .item(), float(), or `if` on a tensor; "
            "torch.clamp replaces the if)."
        )
    return None


def _skips_none(answer, reference) -> str | None:
    params = _param_set(3, grad_none=(1,))
    try:
        answer(params, 0.5)
    except (AttributeError, TypeError) as error:
        return f"it failed on a parameter whose .grad is None ({error}): skip those."
    if params[1].grad is not None:
        return "a parameter without a gradient was given one: leave .grad None alone."
    return None


def _returns_norm_before(answer, reference) -> str | None:
    params, expected_params = _param_set(4), _param_set(4)
    got = answer(params, 0.5)
    expected = clip_grad_norm_(expected_params, 0.5)
    if not isinstance(got, torch.Tensor):
        return f"it returned a {type(got).__name__}: return the norm before clipping as a tensor."
    if got.dim() != 0:
        return f"it returned a tensor of shape {tuple(got.shape)}: return one 0-d tensor."
    if torch.allclose(got, torch.tensor(0.5), rtol=1e-4):
        return "you returned the norm after clipping (0.5): return the norm before clipping."
    after = get_total_norm([p.grad for p in params])
    if torch.allclose(after, expected, rtol=1e-5):
        return "the gradients were not changed: scale every p.grad in place (g.mul_(factor))."
    per_tensor = _param_set(4)
    for p in per_tensor:
        clip_grad_norm_([p], 0.5)
    if all(
        torch.allclose(p.grad, q.grad, rtol=1e-5) for p, q in zip(params, per_tensor, strict=True)
    ):
        return (
            "each tensor was clipped by its own norm: the exercise asks for the global norm, "
            "sqrt(Σ_k ‖g_k‖²) over all tensors, and one factor for all of them."
        )
    return tensor_mismatch(got, expected, "the returned norm", rtol=1e-6)


def _same_gradients(answer, reference) -> str | None:
    for max_norm in (0.5, 1e3):  # clipped, and left alone
        params, expected = _param_set(5, grad_none=(2,)), _param_set(5, grad_none=(2,))
        answer(params, max_norm)
        clip_grad_norm_(expected, max_norm)
        for index, (p, q) in enumerate(zip(params, expected, strict=True)):
            if q.grad is None:
                continue
            what = f"the gradient of tensor {index} after clipping at max_norm={max_norm:g}"
            message = tensor_mismatch(p.grad, q.grad, what, rtol=1e-6)
            if message:
                return message + " The factor is min(1, max_norm / (‖g‖ + 1e-6))."
    return None


def _empty(answer, reference) -> str | None:
    try:
        got = answer([], 1.0)
    except (RuntimeError, ValueError, IndexError):
        return "it raised on an empty list: with no gradients return torch.tensor(0.0)."
    if not isinstance(got, torch.Tensor) or got.numel() != 1 or got.item() != 0:
        return f"with no gradients at all return torch.tensor(0.0); it returned {got!r}."
    return None


ex2 = Exercise(
    "Exercise 2 · The global version, without host syncs",
    my_clip_global_,
    [_no_host_sync, _skips_none, _returns_norm_before, _same_gradients, _empty],
    verified=(
        "0 host syncs on 20 tensors, None gradients skipped, the norm before clipping "
        "returned as a 0-d tensor, gradients equal to clip_grad_norm_'s (clipped and not), "
        "0 for an empty list"
    ),
    hints=[
        "Global: the norm of the vector of per-tensor norms, "
        "torch.linalg.vector_norm(torch.stack([...])).",
        "No if: factor = torch.clamp(max_norm / (total + 1e-6), max=1.0), then g.mul_(factor).",
    ],
)


# --- Exercise 3 · The infinity norm -------------------------------------------------------


def my_total_inf_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.tensor(0.0)
    return torch.stack([t.abs().max() for t in tensors]).max()


def _inf_empty(answer, reference) -> str | None:
    try:
        got = answer([])
    except (RuntimeError, ValueError, IndexError):
        return "it raised on an empty list: return torch.tensor(0.0) when there is nothing."
    if not isinstance(got, torch.Tensor) or got.numel() != 1 or got.item() != 0:
        return f"for an empty list return torch.tensor(0.0); it returned {got!r}."
    return None


def _inf_value(answer, reference) -> str | None:
    tensors = [torch.tensor([[-5.0, 1.0], [0.5, 2.0]]), torch.tensor([3.0, -0.25])]
    got = answer(tensors)
    if isinstance(got, torch.Tensor) and got.dim() != 0:
        return (
            f"it returned shape {tuple(got.shape)}: return one number (a 0-d tensor), the "
            "largest |element| over all tensors together."
        )
    if isinstance(got, torch.Tensor) and got.item() == 3.0:
        return "a negative element is the largest in size (-5): take .abs() before the max."
    l2 = torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors])).item()
    if isinstance(got, torch.Tensor) and math.isclose(got.item(), l2, rel_tol=1e-6):
        return "that is the L2 norm: the infinity norm is the largest |element|."
    return tensor_mismatch(
        got, torch.tensor(5.0), "the inf norm of [[-5, 1], [0.5, 2]], [3, -0.25]"
    )


def _inf_matches_library(answer, reference) -> str | None:
    from clipping_lib.lab.manual import classifier_with_grads

    grads = [p.grad for p in classifier_with_grads(4).parameters()]
    return tensor_mismatch(answer(grads), get_total_norm(grads, "inf"), "the inf norm", 0, 0)


ex3 = Exercise(
    "Exercise 3 · The infinity norm",
    my_total_inf_norm,
    [_inf_empty, _inf_value, _inf_matches_library],
    verified=(
        "0 for an empty list; 5 for tensors whose largest element is -5; equal to "
        "get_total_norm(grads, 'inf') on a real model's gradients, bit for bit"
    ),
    hints=[
        "Per tensor t.abs().max(); then the max of those.",
        "torch.stack([t.abs().max() for t in tensors]).max(), after an `if not tensors`.",
    ],
)


# --- Exercise 4 · Where does the loop's overhead stop mattering? --------------------------


def loop_overhead(size: int) -> tuple[int, float]:
    params = gradient_set(100, size)
    syncs = host_syncs(naive_clip_grad_norm_, params)
    times = time_clippers(gradient_set(100, size), rounds=7, warmup=1)
    return syncs, times["naive loop"] / times["torch"]


def _overhead_shape(answer, reference) -> str | None:
    for size in (8, 64):
        got: Any = answer(size)
        if not (isinstance(got, tuple) and len(got) == 2):
            return f"loop_overhead({size}) returned {got!r}: return a pair (syncs, ratio)."
        syncs, ratio = got
        if syncs != 100:
            guess = (
                " That is the vectorised version's (or torch's) count: count the naive loop."
                if syncs == 0
                else ""
            )
            return (
                f"loop_overhead({size}) counted {syncs} host syncs for 100 tensors; the naive "
                f"loop makes one per tensor, whatever their size.{guess}"
            )
        if not isinstance(ratio, float | int) or not math.isfinite(ratio) or ratio <= 0:
            return f"the ratio should be a positive number (median loop time / torch's): {ratio!r}."
        if ratio < 1e-2:
            return (
                f"a ratio of {ratio:.2g} looks like a time in seconds: divide the loop's median "
                "time by torch's."
            )
    return None


ex4 = Exercise(
    "Exercise 4 · Where does the loop's overhead stop mattering?",
    loop_overhead,
    [_overhead_shape],
    verified=(
        "100 host syncs counted for 100 tensors of 8×8 and of 64×64 (the overhead is per "
        "tensor, not per element), and a positive time ratio for each (its value is this "
        "machine's, so it is not checked)"
    ),
    hints=[
        "gradient_set(100, size) builds the tensors; host_syncs(naive_clip_grad_norm_, params) "
        "counts; time_clippers(params) gives the medians.",
        "The ratio is times['naive loop'] / times['torch'].",
    ],
)
