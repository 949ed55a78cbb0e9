r"""The panel of notebook 02: BPTT gradient norms against the spectral radius.

``spectral_radius``: an RNN :math:`h_t = \varphi(W h_{t-1} + U x_t)` whose recurrent
matrix has spectral radius exactly :math:`\rho`, with a chosen structure and size. Left,
the measured :math:`\lVert\partial L/\partial h_{T-k}\rVert` against the steps back
:math:`k`, beside :math:`\rho^k` and the bound :math:`\sigma_{\max}(W)^k`; right, the
eigenvalues of :math:`W` in the complex plane with the unit circle.

:func:`gradient_profile` is the pure computation the panel draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Circle

from clipping_lib.lab.models import NONLINEARITIES
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.spectral import (
    STRUCTURES,
    fitted_growth_rate,
    largest_singular_value,
    recurrent_matrix,
)
from clipping_lib.lab.threads import single_thread
from clipping_lib.lab.widgets import SliderPanel

MAX_STEPS = 200
BURN_IN = 100  # steps run before the measured window, so a tanh state has settled
NORM_LIMITS = (1e-16, 1e16)


@lru_cache(maxsize=64)
def _unit_matrix(structure: str, size: int) -> tuple[torch.Tensor, np.ndarray, float]:
    """The structure's matrix with spectral radius 1, its eigenvalues and sigma_max."""
    W = recurrent_matrix(size, 1.0, structure, dtype=torch.float64)
    eigenvalues = torch.linalg.eigvals(W.double()).numpy()
    return W, eigenvalues, float(largest_singular_value(W))


@dataclass(frozen=True)
class GradientProfile:
    """What the panel shows for one setting of the controls."""

    norms: np.ndarray  # ||dL/dh_{T-k}|| for k = 0..T (NaN where not finite and > 0)
    eigenvalues: np.ndarray  # complex eigenvalues of W
    sigma_max: float  # largest singular value of W
    growth_rate: float  # fitted slope of log-norm per step over k in [T/2, T], or NaN


def _recurrent_gradient_norms(
    W: np.ndarray, drive: np.ndarray, h0: np.ndarray, tanh: bool, direction: np.ndarray
) -> np.ndarray:
    r""":math:`\lVert\partial L/\partial h_{T-k}\rVert`, ``k = 0..T``, for :math:`L = v^\top h_T`.

    The explicit BPTT recursion :math:`g_{t-1} = W^\top(\varphi'(a_t) \odot g_t)`, which is
    what autograd computes for :func:`clipping_lib.lab.spectral.bptt_gradient_norms` (the
    tests check they agree); in NumPy it costs a few microseconds per step, so a slider
    move stays fast. ``drive`` holds :math:`U x_t` for each step, shape ``(T, n)``.
    """
    steps = len(drive)
    slopes = np.ones_like(drive)
    if tanh:
        h = h0
        for t in range(steps):
            h = np.tanh(W @ h + drive[t])
            slopes[t] = 1.0 - h * h
    norms = np.empty(steps + 1)
    g = direction
    norms[0] = np.linalg.norm(g)
    W_T = np.ascontiguousarray(W.T)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            g = W_T @ (slopes[steps - k] * g)
            norms[k] = np.linalg.norm(g)
    return norms


def gradient_profile(
    rho: float,
    steps: int,
    hidden_size: int,
    nonlinearity: str = "linear",
    structure: str = "gaussian",
    input_scale: float = 1.0,
    seed: int = 0,
) -> GradientProfile:
    r"""Measure the BPTT gradient norms of one RNN with :math:`\rho(W) = ` ``rho``.

    The RNN is ``RNN(1, hidden_size, bias=False, seed=seed)`` with :math:`W = \rho\,W_1`,
    where :math:`W_1` (spectral radius 1) depends only on ``structure`` and
    ``hidden_size``, so moving :math:`\rho` rescales the same eigenvalues. Inputs are
    Gaussian times ``input_scale`` (seeded); the state starts at
    :math:`\mathcal N(0, 0.1^2)` per unit and, for tanh, runs ``BURN_IN`` steps before
    the ``steps`` measured ones. The loss is :math:`v^\top h_T`, :math:`v` all ones
    normalised, as in :func:`clipping_lib.lab.spectral.bptt_gradient_norms`.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    with single_thread():
        W1, eigenvalues, sigma1 = _unit_matrix(structure, hidden_size)
    W = rho * W1.numpy()
    U = torch.randn(
        hidden_size, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )  # the U that RNN(..., seed=seed) draws
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, BURN_IN + steps, 1, generator=generator, dtype=torch.float64)
    h0 = torch.randn(1, hidden_size, generator=generator, dtype=torch.float64) * 0.1
    drive = (x[0] * input_scale).numpy() @ U.T.numpy()  # U x_t for every step, (T, n)
    h = h0[0].numpy()
    tanh = nonlinearity == "tanh"
    if tanh:
        for t in range(BURN_IN):
            h = np.tanh(W @ h + drive[t])
    direction = np.full(hidden_size, 1.0 / math.sqrt(hidden_size))
    norms = _recurrent_gradient_norms(W, drive[BURN_IN:], h, tanh, direction)
    norms = np.where((norms > 0) & np.isfinite(norms), norms, np.nan)
    window = norms[steps // 2 :]
    rate = math.nan if np.isnan(window).any() else fitted_growth_rate(torch.from_numpy(window))
    return GradientProfile(norms, rho * eigenvalues, rho * sigma1, rate)


def spectral_panel(
    rho: float = 1.1,
    steps: int = 100,
    hidden_size: int = 32,
    nonlinearity: str = "linear",
    structure: str = "gaussian",
    input_scale: float = 1.0,
) -> SliderPanel:
    """Gradient norm against steps back, and the eigenvalues of W with the unit circle."""
    figure = new_figure(8.6, 3.6)
    ax_norm, ax_eig = figure.subplots(1, 2, width_ratios=(1.6, 1))
    ax_norm.set(
        xlim=(0, MAX_STEPS),
        ylim=NORM_LIMITS,
        yscale="log",
        xlabel="steps back k = T − t",
        ylabel="‖∂L/∂h$_{T-k}$‖",
    )
    ax_norm.set_title("gradient norm through time", fontsize=10)
    ax_norm.axhline(1.0, color="0.8", lw=0.8, zorder=0)
    (measured,) = ax_norm.plot([], [], color=COLORS["original"], lw=1.6, label="measured")
    (predicted,) = ax_norm.plot([], [], "--", color=COLORS["threshold"], lw=1.2, label="$ρ^k$")
    (bound,) = ax_norm.plot([], [], ":", color=COLORS["value"], lw=1.2, label="$σ_{max}^k$ (bound)")
    ax_norm.legend(loc="lower left", fontsize=8)
    limit = 1.65
    ax_eig.set(
        xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xlabel="Re λ", ylabel="Im λ"
    )
    ax_eig.set_title("eigenvalues of W", fontsize=10)
    ax_eig.add_patch(Circle((0, 0), 1.0, fill=False, color="0.5", lw=1.0, label="unit circle"))
    radius = Circle(
        (0, 0), 1.0, fill=False, ls="--", color=COLORS["threshold"], lw=1.0, label="|λ| = ρ"
    )
    ax_eig.add_patch(radius)
    points = ax_eig.scatter([], [], s=9, color=COLORS["norm"], label="λ(W)")
    ax_eig.legend(loc="upper right", fontsize=7, framealpha=0.9)
    figure.tight_layout()
    freeze_static_artists(figure, [measured, predicted, bound, radius, points])
    readout = widgets.HTML()

    def draw(
        rho: float,
        steps: int,
        hidden_size: int,
        nonlinearity: str,
        structure: str,
        input_scale: float,
    ) -> None:
        profile = gradient_profile(rho, steps, hidden_size, nonlinearity, structure, input_scale)
        k = np.arange(steps + 1)
        measured.set_data(k, profile.norms)
        with np.errstate(divide="ignore"):
            predicted.set_data(k, np.float64(rho) ** k)
        bound.set_data(k, profile.sigma_max**k)
        radius.set_radius(rho)
        points.set_offsets(np.column_stack([profile.eigenvalues.real, profile.eigenvalues.imag]))
        log_rho = math.log(rho) if rho > 0 else -math.inf
        rate = (
            "undefined (under/overflow)"
            if math.isnan(profile.growth_rate)
            else (f"{profile.growth_rate:+.4f}")
        )
        readout.value = (
            f"ρ(W) = {rho:.3f}, σ<sub>max</sub>(W) = {profile.sigma_max:.3f}<br>"
            f"log ρ = {log_rho:+.4f} per step<br>"
            f"fitted growth of log‖grad‖ over k ∈ [T/2, T]: {rate} per step"
        )

    controls = {
        "rho": widgets.FloatSlider(value=rho, min=0.5, max=1.5, step=0.01, description="ρ(W)"),
        "steps": widgets.IntSlider(
            value=steps, min=10, max=MAX_STEPS, step=5, description="steps T"
        ),
        "hidden_size": widgets.IntSlider(
            value=hidden_size, min=2, max=128, step=2, description="hidden size"
        ),
        "nonlinearity": widgets.Dropdown(
            options=list(NONLINEARITIES), value=nonlinearity, description="φ"
        ),
        "structure": widgets.Dropdown(
            options=list(STRUCTURES), value=structure, description="W structure"
        ),
        "input_scale": widgets.FloatSlider(
            value=input_scale, min=0.0, max=3.0, step=0.1, description="input scale"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"spectral_radius": spectral_panel}


def plot_weight_gradient(
    term_norms: torch.Tensor,
    state_norms: torch.Tensor,
    lengths: list[int],
    full_norm: list[float],
    truncated_norm: dict[int, list[float]],
    bounds: dict[int, float],
) -> None:
    r"""Notebook 02 §7: the terms of :math:`\partial L/\partial W` and its norm against :math:`T`.

    Left: ``term_norms`` (the norm of each term, by steps back) beside ``state_norms``
    (:math:`\lVert\partial L/\partial h_{T-k}\rVert`). Right: the full BPTT weight-gradient
    norm against the sequence length, each truncated one (``truncated_norm[k]``) and its
    :math:`T`-free bound ``bounds[k]`` (dotted).
    """
    import matplotlib.pyplot as plt

    fig, (ax_terms, ax_T) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_terms.semilogy(term_norms, color="C0", lw=2, label="‖term$_{T-k}$‖ = ‖δ$_t$ h$_{t-1}^⊤$‖")
    ax_terms.semilogy(state_norms, "C1--", lw=1.5, label="‖∂L/∂h$_{T-k}$‖ (state gradient)")
    ax_terms.set(xlabel="steps back k = T − t", title="T = 100: the terms of ∂L/∂W")
    ax_terms.legend(fontsize=8)
    ax_T.semilogy(lengths, full_norm, "C3o-", ms=3, lw=2, label="full BPTT ‖∂L/∂W‖")
    for (k, norms), color in zip(truncated_norm.items(), ["C0", "C2", "C4", "C5"], strict=False):
        ax_T.semilogy(lengths, norms, "o-", ms=3, color=color, label=f"truncated, k = {k}")
        ax_T.axhline(bounds[k], color=color, ls=":", lw=1)
    ax_T.plot([], [], "k:", lw=1, label="bounds B √n Σ$_{j<k}$ σ$_{max}^j$")
    ax_T.set(xlabel="sequence length T", ylabel="Frobenius norm",
             title="the weight gradient against T")  # fmt: skip
    ax_T.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
