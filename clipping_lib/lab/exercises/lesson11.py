r"""Lesson 11's exercises: combine per-mesh norms, the HSDP norm, clip inside a backward hook."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipping_lib.lab.exercises._core import Exercise, tensor_mismatch
from clipping_lib.lab.meshes import per_parameter_clip_hook
from clipping_lib.lab.parallel import make_batch, make_model

__all__ = ["combine_norms", "ex1", "ex2", "ex3", "hsdp_norm"]


def _as_float(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


# --- Exercise 1: combine the norms of several meshes ------------------------------------


def combine_norms(norms: torch.Tensor, norm_type: float = 2.0) -> torch.Tensor:
    r"""The global p-norm from each group's (already reduced) norm :math:`n_k`.

    :math:`(\sum_k n_k^p)^{1/p}`, or :math:`\max_k n_k` for the max norm: the norms of the
    pieces are the entries of one vector whose p-norm is the global norm.
    """
    if math.isinf(norm_type):
        return norms.max()
    return norms.pow(norm_type).sum().pow(1.0 / norm_type)


_COMBINE_CASES = [
    (torch.tensor([20.0**0.5, 10.0]), 2.0),  # DeepSpeed PR #8478: sqrt(20), sqrt(100)
    (torch.tensor([3.0, 4.0, 12.0]), 2.0),
    (torch.tensor([0.5, 1.5, 2.0]), 1.0),
    (torch.tensor([1.0, 2.0, 3.0]), 3.0),
    (torch.tensor([0.25, 4.0, 1.0]), math.inf),
]


def _combine_diagnosis(answer, reference) -> str | None:
    for norms, p in _COMBINE_CASES:
        got, expected = answer(norms.clone(), p), reference(norms, p)
        if not isinstance(got, torch.Tensor):
            return f"return a tensor (a 0-d one, like get_total_norm), not a {type(got).__name__}."
        value, want = _as_float(got), expected.item()
        if math.isclose(value, want, rel_tol=1e-5):
            continue
        if math.isclose(value, norms.mean().item(), rel_tol=1e-5):
            return (
                f"you averaged the norms ({value:.4g} instead of {want:.4g}): that is "
                "DeepSpeed#8475's bug. Norms of disjoint pieces combine like the entries of "
                "one vector."
            )
        if math.isinf(p):
            return f"for the max norm (norm_type=inf) the answer is the largest norm, {want:.4g}."
        if math.isclose(value, norms.sum().item(), rel_tol=1e-5):
            return "you added the norms: add their p-th powers, then take the p-th root."
        if math.isclose(value, norms.pow(p).sum().item(), rel_tol=1e-5):
            return "you returned the sum of the p-th powers: take the p-th root at the end."
        if math.isclose(value, norms.pow(2).sum().sqrt().item(), rel_tol=1e-5):
            return f"that is the 2-norm; use norm_type (here {p:g}) as the power and the root."
        return (
            f"for norms {norms.tolist()} and norm_type={p:g} you gave {value:.5g}; "
            f"expected {want:.5g}."
        )
    return None


ex1 = Exercise(
    "Exercise 1 · One norm from several meshes",
    combine_norms,
    [_combine_diagnosis],
    verified="equal to the norm of the concatenated pieces for p = 1, 2, 3 and inf, "
    "sqrt(120) for the DeepSpeed PR's two ranks",
    hints=[
        "Think of the norms n_k as the entries of one vector: the global norm is that "
        "vector's p-norm.",
        "norms.pow(p).sum().pow(1 / p); for p = inf, norms.max().",
    ],
)


# --- Exercise 2: the HSDP norm from each rank's local squares -----------------------------


def hsdp_norm(local_squares: torch.Tensor) -> torch.Tensor:
    r"""The global 2-norm on an HSDP mesh from each rank's squared shard norm.

    ``local_squares[r, s]`` is rank ``(r, s)``'s :math:`\lVert g_s\rVert^2`: the columns
    are distinct shards, the rows are replicas of the same shards. Each shard counts
    once: :math:`\sqrt{\sum_s \lVert g_s\rVert^2}`, taken from one replica row.
    """
    return local_squares[0].sum().sqrt()


def _hsdp_cases() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    cases = []
    for replicas, shards in ((2, 2), (4, 2), (2, 8), (3, 5)):
        row = torch.rand(shards, generator=generator, dtype=torch.float64) * 4
        cases.append(row.expand(replicas, shards).clone())
    return cases


def _hsdp_diagnosis(answer, reference) -> str | None:
    for squares in _hsdp_cases():
        replicas, shards = squares.shape
        got, want = answer(squares.clone()), reference(squares)
        if not isinstance(got, torch.Tensor):
            return f"return a tensor, not a {type(got).__name__}."
        if got.numel() != 1:
            return (
                f"you returned {got.numel()} numbers for a {replicas}x{shards} mesh: the "
                "model has one norm, the same on every rank."
            )
        value, expected = _as_float(got), want.item()
        if math.isclose(value, expected, rel_tol=1e-6):
            continue
        if math.isclose(value, squares.sum().sqrt().item(), rel_tol=1e-6):
            return (
                f"you summed over all {replicas * shards} ranks, so each shard counts "
                f"{replicas} times (a norm sqrt({replicas}) too large): reduce over the "
                "shard dimension only."
            )
        if math.isclose(value, squares[0, 0].sqrt().item(), rel_tol=1e-6):
            return "that is one rank's local norm: add the squares of the distinct shards."
        if math.isclose(value, squares[0].sum().item(), rel_tol=1e-6):
            return "you returned the sum of squares: take the square root."
        if math.isclose(value, squares[:, 0].sum().sqrt().item(), rel_tol=1e-6):
            return (
                "you summed down a column: the rows are replicas of the same shards, the "
                "columns are the distinct shards."
            )
        return f"for a {replicas}x{shards} mesh you gave {value:.5g}; expected {expected:.5g}."
    return None


ex2 = Exercise(
    "Exercise 2 · The norm on a replicate x shard mesh",
    hsdp_norm,
    [_hsdp_diagnosis],
    verified="the norm of the distinct shards, each counted once, on 2x2, 4x2, 2x8 and 3x5 meshes",
    hints=[
        "Which ranks hold different parts of the gradient, and which hold copies?",
        "Sum one row (the distinct shards), then take the square root.",
    ],
)


# --- Exercise 3: clip inside the backward pass --------------------------------------------

HOOK_MAX_NORM, HOOK_LR = 0.2, 0.1


def _run_hooked(make_hook) -> tuple[torch.nn.Module, torch.Tensor]:
    """Register ``make_hook(c, lr)`` on every parameter of a fresh model, run one backward."""
    model = make_model(0)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(make_hook(HOOK_MAX_NORM, HOOK_LR))
    x, y = make_batch(32, 0)
    F.mse_loss(model(x), y).backward()
    return model, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _hook_diagnosis(answer, reference) -> str | None:
    hook = answer(HOOK_MAX_NORM, HOOK_LR)
    if not callable(hook):
        return "return the hook itself: a function that takes the parameter."
    model, got = _run_hooked(answer)
    _, expected = _run_hooked(reference)
    start = torch.cat([p.detach().reshape(-1) for p in make_model(0).parameters()])
    if torch.equal(got, start):
        return "the weights did not move: the hook must take the SGD step, p -= lr * clipped g."
    if any(p.grad is not None for p in model.parameters()):
        return (
            "the gradients are still there after backward: set p.grad = None in the hook, "
            "or optimizer-in-backward saves no memory."
        )
    x, y = make_batch(32, 0)
    plain = make_model(0)
    F.mse_loss(plain(x), y).backward()
    unclipped = torch.cat([(p.detach() - HOOK_LR * p.grad).reshape(-1) for p in plain.parameters()])
    if torch.allclose(got, unclipped, atol=1e-7):
        return "the step used the raw gradient: scale it by min(1, c / (its norm + 1e-6)) first."
    return tensor_mismatch(got, expected, "the weights after the hooked backward", atol=1e-6)


ex3 = Exercise(
    "Exercise 3 · Clip inside the backward pass",
    per_parameter_clip_hook,
    [_hook_diagnosis],
    verified="the weights after one hooked backward match per-parameter clipping and an "
    "SGD step, and no gradient is left",
    hints=[
        "Inside the hook, p.grad is this parameter's finished gradient; the other "
        "parameters' gradients are not there (yet, or any more).",
        "with torch.no_grad(): p.add_(p.grad * torch.clamp(c / (p.grad.norm() + 1e-6), "
        "max=1.0), alpha=-lr); then p.grad = None.",
    ],
)
