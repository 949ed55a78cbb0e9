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

from clipping_lib.models import NONLINEARITIES, RNN
from clipping_lib.panels.geometry import freeze_static_artists
from clipping_lib.plots import COLORS, new_figure
from clipping_lib.spectral import (
    STRUCTURES,
    bptt_gradient_norms,
    fitted_growth_rate,
    largest_singular_value,
    recurrent_matrix,
    single_thread,
)
from clipping_lib.widgets import SliderPanel

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

    :math:`W = \rho\,W_1` where :math:`W_1` (spectral radius 1) depends only on
    ``structure`` and ``hidden_size``, so moving :math:`\rho` rescales the same
    eigenvalues. Inputs are Gaussian times ``input_scale`` (one input channel, seeded);
    the state starts at :math:`\mathcal N(0, 0.1^2)` per unit and runs ``BURN_IN``
    steps before the ``steps`` measured ones. The loss is :math:`v^\top h_T`.
    """
    with single_thread():
        W1, eigenvalues, sigma1 = _unit_matrix(structure, hidden_size)
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    model = RNN(
        1,
        hidden_size,
        nonlinearity=nonlinearity,
        bias=False,
        recurrent_matrix=rho * W1,
        seed=seed,
        dtype=torch.float64,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, BURN_IN + steps, 1, generator=generator, dtype=torch.float64)
    x = x * input_scale
    h0 = torch.randn(1, hidden_size, generator=generator, dtype=torch.float64) * 0.1
    if nonlinearity == "tanh":
        with torch.no_grad(), single_thread():
            h0 = model.unroll(x[:, :BURN_IN], h0)[-1]
    norms = bptt_gradient_norms(model, x[:, BURN_IN:], h0)[0]
    norms = torch.where((norms > 0) & torch.isfinite(norms), norms, torch.nan)
    window = norms[steps // 2 :]
    rate = fitted_growth_rate(window) if not bool(window.isnan().any()) else math.nan
    return GradientProfile(norms.numpy(), rho * eigenvalues, rho * sigma1, rate)


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
