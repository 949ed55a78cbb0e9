"""The static figures of notebook 06 (the cliff, and why clipping works).

Each function draws on axes it is given and returns nothing, so the lesson keeps the
computation in view and the plotting out of it. The slider panels are in
:mod:`clipping_lib.lab.panels.cliff` and :mod:`clipping_lib.lab.panels.bias`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from clipping_lib.lab.landscape import DescentPath, Surface
from clipping_lib.lab.plots import COLORS
from clipping_lib.lab.smoothness import SmoothnessFit, TrainingSmoothness

__all__ = [
    "path_styles",
    "plot_bias",
    "plot_cliff_3d",
    "plot_cliff_smoothness",
    "plot_paths",
    "plot_quartic",
    "plot_slope_and_curvature",
    "plot_surface",
    "plot_training_smoothness",
    "plot_two_trajectories",
]

_SEED_COLORS = plt.get_cmap("tab10").colors


def plot_quartic(
    ax_path: Axes,
    ax_starts: Axes,
    paths: Mapping[str, np.ndarray],
    starts: np.ndarray,
    outcome: Mapping[str, Sequence[float]],
    *,
    lr: float,
    threshold: float,
) -> None:
    """Left: ``|x|`` along plain and clipped GD on x⁴; right: where each start ends up."""
    ax_path.semilogy(np.abs(paths["plain"]), "o-", ms=3, color="0.3",
                     label="plain GD (ends at inf)")  # fmt: skip
    ax_path.semilogy(np.abs(paths["clipped"]), color=COLORS["norm"], lw=2,
                     label=f"clipped GD, c = {threshold}")  # fmt: skip
    ax_path.set(xlabel="step", ylabel="|x|", title=f"f(x) = x⁴ from x₀ = 3, lr = {lr}",
                ylim=(1e-2, 1e10))  # fmt: skip
    ax_path.legend(fontsize=8)
    plain_end = [abs(v) if math.isfinite(v) else 1e3 for v in outcome["plain"]]
    ax_starts.semilogx(starts, plain_end, "o", ms=10, mfc="none", color="0.3",
                       label="plain GD (1e3 = diverged)")  # fmt: skip
    ax_starts.semilogx(starts, np.abs(outcome["clipped"]), "s", color=COLORS["norm"],
                       label="clipped GD")  # fmt: skip
    ax_starts.axvline(math.sqrt(1 / (2 * lr)), color=COLORS["threshold"], ls="--", lw=1,
                      label="plain GD diverges beyond 1/√(2 lr)")  # fmt: skip
    ax_starts.set(yscale="log", xlabel="start x₀", ylabel="|x| after 2000 steps",
                  title="same lr from every start")  # fmt: skip
    ax_starts.legend(fontsize=8)


def plot_training_smoothness(
    ax_fit: Axes, ax_loss: Axes, runs: Sequence[TrainingSmoothness], baseline: float
) -> None:
    """Left: local smoothness against gradient norm, one colour and slope line per seed;
    right: each run's training loss against the marker-blind ``baseline``."""
    for run, color in zip(runs, _SEED_COLORS, strict=False):
        g, L = run.grad_norm, run.smoothness
        ax_fit.scatter(g, L, s=6, color=color, alpha=0.5)
        log_g = torch.linspace(float(g.log10().min()), float(g.log10().max()), 20,
                               dtype=torch.float64)  # fmt: skip
        centre_g, centre_L = float(g.log10().mean()), float(L.log10().mean())
        line = 10 ** (centre_L + run.slope * (log_g - centre_g))
        ax_fit.plot(10**log_g, line, color=color, lw=2,
                    label=f"seed {run.seed}: slope {run.slope:.2f}")  # fmt: skip
        ax_loss.plot(run.loss, color=color, lw=1)
    ax_fit.set(xscale="log", yscale="log", xlabel="gradient norm ‖g_k‖",
               ylabel="local smoothness L̂_k", title="along training, one colour per seed")
    ax_fit.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels would overlap
    ax_fit.legend(fontsize=7, ncol=2)
    ax_loss.axhline(baseline, color="0.4", ls="--", label=f"ignore the markers: {baseline:.3f}")
    ax_loss.set(xlabel="step", ylabel="training loss (MSE)", yscale="log", title="the runs learn")
    ax_loss.legend(fontsize=8)


def plot_cliff_smoothness(
    ax: Axes,
    crossings: Mapping[float, tuple[Tensor, Tensor]],
    fits: Mapping[float, SmoothnessFit],
    widths: Mapping[float, float],
    grid: tuple[Tensor, Tensor],
) -> None:
    """Curvature against gradient norm across the wall at each ``w``, with each fit, and
    the coarse grid's points (plateaus) in grey."""
    colors = (COLORS["norm"], COLORS["value"])
    for (w, (g, h)), color in zip(crossings.items(), colors, strict=False):
        ax.scatter(g, h, s=6, color=color, alpha=0.6, label=f"across the wall, w = {w}")
        ordered = g.sort().values
        ax.plot(ordered, fits[w].predict(ordered), color=color, lw=1.5,
                label=f"fit: L₁ = {fits[w].L1:.2g} (1/width = {1 / widths[w]:.2g})")  # fmt: skip
    ax.scatter(grid[0].flatten(), grid[1].flatten(), s=3, color="0.6", alpha=0.4,
               label="a coarse grid (plateaus)")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="‖∇L‖", ylabel="‖∇²L‖₂",
           title="the cliff: curvature against gradient")  # fmt: skip
    ax.legend(fontsize=7)


def plot_two_trajectories(ax: Axes, trajectories: Tensor, biases: Tensor, w: float) -> None:
    """``x_t`` against ``t`` for two biases (columns of ``trajectories``, rows ``t = 1..``)."""
    steps = range(1, len(trajectories) + 1)
    for column, color in ((0, COLORS["value"]), (1, COLORS["norm"])):
        ax.plot(steps, trajectories[:, column], "o-", ms=2.5, color=color,
                label=f"b = {biases[column]:.5f}")  # fmt: skip
    ax.set(xlabel="time step t", ylabel="$x_t$", title=f"w = {w}: two biases 2e-4 apart")
    ax.legend()


def plot_surface(ax_loss: Axes, ax_grad: Axes, surface: Surface) -> None:
    """The loss (left) and ``log10`` of the gradient norm (right) over the grid."""
    figure = ax_loss.figure
    image = ax_loss.imshow(surface.loss, origin="lower", extent=surface.extent, aspect="auto",
                           cmap="viridis", vmin=0, vmax=0.5)  # fmt: skip
    figure.colorbar(image, ax=ax_loss, label="loss")
    image = ax_grad.imshow(torch.log10(surface.grad_norm), origin="lower", extent=surface.extent,
                           aspect="auto", cmap="magma", vmin=-3, vmax=1.5)  # fmt: skip
    figure.colorbar(image, ax=ax_grad, label="log10 ‖∇L‖")
    for ax, title in ((ax_loss, "loss L(w, b)"), (ax_grad, "gradient norm (log scale)")):
        ax.set(xlabel="recurrent weight w", ylabel="bias b", title=title)


def path_styles(threshold: float) -> dict[str, tuple[str, str]]:
    """Colour and label of each descent path (``none``, ``norm``, ``value``)."""
    return {"none": ("white", "no clipping"), "norm": (COLORS["norm"], f"norm, c = {threshold}"),
            "value": (COLORS["value"], f"value, c = {threshold}")}  # fmt: skip


def plot_paths(
    ax: Axes,
    ax_steps: Axes,
    surface: Surface,
    runs: Mapping[str, DescentPath],
    *,
    start: tuple[float, float],
    lr: float,
    threshold: float,
) -> None:
    """Left: the paths over the loss map, the unclipped throw annotated; right: step lengths."""
    ax.imshow(surface.loss, origin="lower", extent=surface.extent, aspect="auto",
              cmap="viridis", vmin=0, vmax=0.5)  # fmt: skip
    styles = path_styles(threshold)
    for method, path in runs.items():
        color, label = styles[method]
        ax.plot(path.points[:, 0], path.points[:, 1], "o-", ms=2.5, lw=1.2, color=color,
                label=label)  # fmt: skip
        ax_steps.plot(path.step_length, color="0.3" if method == "none" else color, label=label)
    throw = int(runs["none"].step_length.argmax())
    w_to, b_to = runs["none"].points[throw + 1]
    ax.annotate(f"thrown to ({w_to:.0f}, {b_to:.0f}) ↗", (5.7, 0.3), color="white", fontsize=9)
    ax.plot(*start, "*", ms=14, color=COLORS["threshold"], mec="white", label="start")
    x_range = (float(surface.w_values[0]), float(surface.w_values[-1]))
    y_range = (float(surface.b_values[0]), float(surface.b_values[-1]))
    ax.set(xlim=x_range, ylim=y_range, xlabel="recurrent weight w", ylabel="bias b",
           title=f"gradient descent, lr = {lr}")  # fmt: skip
    ax.legend(loc="lower left", fontsize=8, facecolor="0.8")
    ax_steps.axhline(lr * threshold, color=COLORS["threshold"], ls="--", lw=1, label="lr x c")
    ax_steps.set(yscale="log", xlabel="descent step", ylabel="step length ‖Δθ‖",
                 title="length of every step")  # fmt: skip
    ax_steps.legend(fontsize=8)


def plot_cliff_3d(
    figure: Figure, surface: Surface, runs: Mapping[str, DescentPath], threshold: float
) -> None:
    """Pascanu et al.'s Fig. 6 view: the loss as a height, the paths drawn on top of it
    (the unclipped one up to its throw)."""
    ax3d = figure.add_subplot(projection="3d", computed_zorder=False)  # keep paths on top
    w_mesh, b_mesh = np.meshgrid(surface.w_values.numpy(), surface.b_values.numpy())
    every = 4  # a coarser mesh draws faster and reads the same
    ax3d.plot_surface(w_mesh[::every, ::every], b_mesh[::every, ::every],
                      surface.loss.numpy()[::every, ::every], cmap="viridis",
                      norm=Normalize(0, 0.5), linewidth=0, antialiased=False,
                      alpha=0.6)  # fmt: skip
    throw = int(runs["none"].step_length.argmax())
    styles = path_styles(threshold)
    for method, path in runs.items():
        color, label = styles[method]
        unclipped = method == "none"
        end = throw + 1 if unclipped else len(path.points)
        ax3d.plot(path.points[:end, 0], path.points[:end, 1], path.loss[:end] + 0.02,
                  "o-" if unclipped else "-", ms=3, color="black" if unclipped else color,
                  lw=2.5, label=label, zorder=12 if unclipped else 10)  # fmt: skip
    ax3d.set(xlabel="w", ylabel="b", zlabel="loss", zlim=(0, 0.5),
             xlim=(float(surface.w_values[0]), float(surface.w_values[-1])),
             ylim=(float(surface.b_values[0]), float(surface.b_values[-1])))  # fmt: skip
    ax3d.view_init(elev=35, azim=120)  # looking at the cliff from the lower plateau
    ax3d.legend(loc="upper left", fontsize=8)
    ax3d.set_title("the cliff, Pascanu et al. (2013) Fig. 6 rebuilt")


def plot_slope_and_curvature(
    ax: Axes, b: Tensor, slope: Tensor, curvature: Tensor, w: float
) -> None:
    """``|L'|``, ``|L''|`` and their ratio along a line of ``b`` at ``w`` (log scale)."""
    ax.plot(b, slope.abs(), color=COLORS["norm"], label="|∂L/∂b|  (gradient)")
    ax.plot(b, curvature.abs(), color=COLORS["value"], label="|∂²L/∂b²|  (curvature)")
    ax.plot(b, slope.abs() / curvature.abs(), color=COLORS["threshold"],
            label="|∂L/∂b| / |∂²L/∂b²|")  # fmt: skip
    ax.set(yscale="log", xlabel=f"bias b (w = {w:g})", ylabel="magnitude",
           title=f"across the cliff at w = {w:g}", ylim=(1e-7, 1e10))  # fmt: skip
    ax.legend(fontsize=8)


def plot_bias(
    ax: Axes,
    thresholds: Tensor,
    fixed_points: Mapping[str, Tensor],
    measured: Mapping[str, Tensor],
) -> None:
    """Where clipped SGD settles against the threshold: fixed point (line), SGD (dots)."""
    for kind, color in (("exponential", COLORS["value"]), ("gaussian", COLORS["norm"])):
        ax.plot(thresholds, fixed_points[kind], "-", color=color, lw=2,
                label=f"{kind} noise: fixed point x_c")  # fmt: skip
        ax.plot(thresholds, measured[kind][: len(thresholds)], "o", color=color,
                label=f"{kind}: clipped SGD")  # fmt: skip
    ax.axhline(0, color="0.4", lw=1)
    ax.set(xscale="log", xlabel="threshold c", ylabel="where SGD settles (optimum: 0)",
           title="clipped SGD on x²/2: biased only when the noise is skewed")  # fmt: skip
    ax.legend(fontsize=8)
