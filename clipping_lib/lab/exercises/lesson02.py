r"""Exercises of notebook 02 (the spectral radius).

* ``ex1``: the spectral radii that make a gradient 1000 times larger and 1000 times
  smaller over :math:`T = 50` steps of an orthogonal :math:`W` (a number answer).
* ``ex2``: a :math:`2 \times 2` matrix with :math:`\rho = 0.5` whose powers reach
  :math:`\lVert W^k\rVert_2 > 10` before they decay.
* ``ex3``: the eigenvalue of largest modulus of the panel's symmetric :math:`W` at
  :math:`\rho = 1.3` (open-ended: the eigenvalue is checked, the explanation is prose).
* ``ex4``: ``truncated_cosine(terms, k)``, the cosine between truncated and full BPTT
  weight gradients (open-ended: the function is checked, the reading is prose).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from clipping_lib.lab.exercises._core import Exercise
from clipping_lib.lab.panels import spectral as spectral_panels
from clipping_lib.lab.spectral import largest_singular_value, power_norms, spectral_radius

__all__ = ["ex1", "ex2", "ex3", "ex4"]


# --- Exercise 1 · Three orders of magnitude in 50 steps -----------------------------------


def _pair(answer, reference) -> str | None:
    try:
        up, down = (float(a) for a in answer)
    except (TypeError, ValueError):
        return "answer should be a pair of numbers: (rho for x1000, rho for x1/1000)."
    (up_ref, down_ref), close = reference, lambda a, b: math.isclose(a, b, rel_tol=1e-4)
    if close(up, down_ref) and close(down, up_ref):
        return "the two are swapped: first the ρ that makes the gradient 1000 times larger."
    if close(up, math.exp(3 / 50)) or close(down, math.exp(-3 / 50)):
        return "you used the natural logarithm: 1000 = 10³, so ρ⁵⁰ = 10³ gives ρ = 10^(3/50)."
    for steps in (49, 51):
        if close(up, 1000 ** (1 / steps)) or close(down, 1000 ** (-1 / steps)):
            return f"that is ρ for T = {steps}: off by one in T; ρ^50 = 1000 over 50 steps."
    if close(up, 1000 / 50) or close(up, 1 + 1000 / 50):
        return "ρ is a factor per step, multiplied 50 times: solve ρ⁵⁰ = 1000, not 50ρ = 1000."
    if not close(up, up_ref):
        return f"{up:.4g}⁵⁰ = {up**50:.3g}, not 1000."
    if not close(down, down_ref):
        return f"{down:.4g}⁵⁰ = {down**50:.3g}, not 1/1000."
    return None


ex1 = Exercise(
    "Exercise 1 · Three orders of magnitude in 50 steps",
    (10 ** (3 / 50), 10 ** (-3 / 50)),
    [_pair],
    verified="ρ = 10^(3/50) for x1000 and 10^(-3/50) for x1/1000 over T = 50 steps",
    hints=[
        "For an orthogonal W, ‖W^T‖ = ρ^T exactly: solve ρ⁵⁰ = 1000.",
        "ρ = 1000 ** (1 / 50), and its inverse for the other one.",
    ],
)


# --- Exercise 2 · Growth before decay -----------------------------------------------------


def _transient_matrix() -> torch.Tensor:
    return torch.tensor([[0.5, 40.0], [0.0, 0.5]], dtype=torch.float64)


def _transient(answer, reference) -> str | None:
    if not isinstance(answer, torch.Tensor) or answer.shape != (2, 2):
        shape = tuple(answer.shape) if isinstance(answer, torch.Tensor) else type(answer).__name__
        return f"W should be a 2 x 2 tensor, got {shape}."
    W = answer.double()
    rho = spectral_radius(W).item()
    if abs(rho - 0.5) > 1e-6:
        return (
            f"ρ(W) = {rho:.4g}, not 0.5: an upper-triangular matrix has its eigenvalues on "
            "its diagonal, so put 0.5 there."
        )
    norms = power_norms(W, 200)
    if norms.max() <= 10:
        if torch.allclose(W @ W.T, W.T @ W):
            return (
                "your W is normal (W Wᵀ = Wᵀ W), so ‖W^k‖ = ρ^k only decays: put a large "
                "entry above the diagonal."
            )
        return (
            f"the peak of ‖W^k‖ is {norms.max():.3g}, not above 10: make the entry above the "
            f"diagonal larger (σ_max is now {largest_singular_value(W).item():.3g})."
        )
    if not norms[-1] < 1:
        return "‖W^k‖ has not decayed after 200 steps: keep the entries finite and ρ = 0.5."
    return None


ex2 = Exercise(
    "Exercise 2 · Growth before decay",
    _transient_matrix(),
    [_transient],
    verified="ρ(W) = 0.5, a peak of ‖W^k‖ above 10, and decay below 1 by k = 200",
    hints=[
        "An upper-triangular matrix has its eigenvalues on its diagonal.",
        "[[0.5, a], [0, 0.5]] with a large a: W^k has k·a·0.5^(k-1) in its corner.",
    ],
)


# --- Exercise 3 · Same ρ, different structure ---------------------------------------------


def _symmetric_top_eigenvalue() -> float:
    profile = spectral_panels.gradient_profile(1.3, 100, 32, "tanh", "symmetric", input_scale=0.0)
    top = profile.eigenvalues[np.argmax(np.abs(profile.eigenvalues))]
    return round(float(top.real), 9)  # real: W is symmetric; rounded, so no noise is shown


def _eigenvalue(answer, reference) -> str | None:
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, np.generic):
        answer = answer.item()
    if not isinstance(answer, numbers.Number):
        return f"answer should be one number (the eigenvalue), got a {type(answer).__name__}."
    value = complex(answer)
    if abs(value.imag) > 1e-6:
        return "a symmetric matrix has real eigenvalues: this one has an imaginary part."
    if abs(value - reference) < 1e-6:
        return None
    if abs(value + reference) < 1e-6:
        return (
            "that is its modulus ρ = 1.3, with the wrong sign: the eigenvalue of largest "
            "modulus is negative, so the state flips sign every step."
        )
    if abs(abs(value) - 1.3) > 1e-6:
        return (
            f"|{value.real:.4g}| is not ρ = 1.3: take the eigenvalue of largest *modulus* "
            "(np.argmax(np.abs(eigenvalues))), not the largest value."
        )
    return f"{value.real:.4g} is not the eigenvalue of largest modulus."


_TOP = _symmetric_top_eigenvalue()
ex3 = Exercise(
    "Exercise 3 · Same ρ, different structure",
    _TOP,
    [_eigenvalue],
    verified=f"the panel's symmetric W at ρ = 1.3: eigenvalue of largest modulus {_TOP:+.2f}",
    hints=[
        "gradient_profile(...).eigenvalues holds the eigenvalues of the W the panel used.",
        "eigenvalues[np.argmax(np.abs(eigenvalues))]; look at its sign.",
    ],
)


# --- Exercise 4 · What truncation throws away ---------------------------------------------


def truncated_cosine(terms: torch.Tensor, k: int) -> float:
    full, truncated = terms.sum(dim=0), terms[-k:].sum(dim=0)
    dot = (full * truncated).sum()
    return (dot / (torch.linalg.matrix_norm(full) * torch.linalg.matrix_norm(truncated))).item()


def _example_terms() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    growth = 1.3 ** torch.arange(30, 0, -1, dtype=torch.float64)  # the old terms are large
    return torch.randn(30, 4, 4, generator=generator, dtype=torch.float64) * growth[:, None, None]


def _cosines(answer, reference) -> str | None:
    terms = _example_terms()
    for k in (1, 5, 12):
        got = answer(terms, k)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return f"truncated_cosine(terms, {k}) returned {got!r}: return one number."
        expected = reference(terms, k)
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if math.isclose(got, reference(terms.flip(0), k), rel_tol=1e-6):
            return (
                "you kept the k oldest terms (terms[:k]): truncated BPTT keeps the k most "
                "recent ones, terms[-k:], the steps closest to the loss."
            )
        for other in (k - 1, k + 1):
            if 0 < other and math.isclose(got, reference(terms, other), rel_tol=1e-6):
                return f"you kept {other} terms for k = {k}: off by one; terms[-k:] keeps k."
        if abs(got) > 1 + 1e-9:
            return f"{got:.4g} is not a cosine: divide the dot product by both Frobenius norms."
        return f"truncated_cosine(terms, {k}) = {got:.6g}; expected {expected:.6g}."
    if not math.isclose(float(answer(terms, len(terms))), 1.0, rel_tol=1e-9):
        return "with k = T nothing is dropped, so the cosine should be 1."
    return None


ex4 = Exercise(
    "Exercise 4 · What truncation throws away",
    truncated_cosine,
    [_cosines],
    verified="equal to the reference for k = 1, 5, 12 on 30 terms (old ones largest), 1 at k = T",
    hints=[
        "terms[t] is step t+1's term; the full gradient is terms.sum(0), the truncated one "
        "terms[-k:].sum(0).",
        "cosine(A, B) = (A * B).sum() / (‖A‖_F ‖B‖_F), with torch.linalg.matrix_norm.",
    ],
)
