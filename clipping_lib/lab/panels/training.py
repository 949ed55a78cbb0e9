r"""Panel for notebook 05: training curves of a tanh RNN for a chosen lr, threshold and method.

Every (learning rate, threshold) pair of one sequence length and one clipping method is
trained at once by :func:`make_grid` (a batched :func:`~clipping_lib.lab.training.train_grid`
call, a few seconds); the panel keeps each grid it has computed, so moving the learning
rate or threshold slider only picks a stored run and redraws. A length or method not yet
seen costs one grid the first time.

The runs: the adding problem (:func:`~clipping_lib.lab.tasks.adding_problem`, 4096 seeded
sequences), a :class:`~clipping_lib.lab.training.TanhRNN` with 32 hidden units, plain SGD on
mini-batches of 32, ``GRID_STEPS`` steps, the same initial weights and batches in every run.

The notebook's static figures live here too, so the lesson shows one call, not the
plotting code: :func:`stability_map_figure` (the grid's final losses, and every run's
final loss against the length of its typical step) and :func:`plot_seeds` (one curve per
seed and their median, for a group of runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.tasks import adding_baseline_mse, adding_problem
from clipping_lib.lab.training import GridResult, TrainingHistory, train_grid
from clipping_lib.lab.widgets import SliderPanel

LEARNING_RATES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
THRESHOLDS = (0.03, 0.1, 0.3, 1.0, 3.0)
LENGTHS = (10, 20, 40)
STRATEGIES = ("none", "norm", "value")
GRID_STEPS = 400
HIDDEN_SIZE = 32
BATCH_SIZE = 32
N_SEQUENCES = 4096
SEED = 0

_LOSS_LIMITS = (3e-2, 1e5)
_NORM_LIMITS = (1e-2, 1e6)


def make_grid(length: int = 10, method: str = "norm", *, steps: int = GRID_STEPS) -> GridResult:
    """All ``LEARNING_RATES`` x (``THRESHOLDS`` + no clipping) runs for one length and method."""
    if length not in LENGTHS:
        raise ValueError(f"length must be one of {LENGTHS}, got {length!r}")
    task = adding_problem(N_SEQUENCES, length, seed=SEED)
    return train_grid(
        task,
        LEARNING_RATES,
        (*THRESHOLDS, math.inf),
        method=method,
        steps=steps,
        hidden_size=HIDDEN_SIZE,
        batch_size=BATCH_SIZE,
        seed=SEED,
    )


def pick_run(grid: GridResult, lr: float, threshold: float, strategy: str) -> TrainingHistory:
    """The run of ``grid`` at ``lr`` and ``threshold`` (the no-clipping run for ``"none"``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    (rows,) = np.nonzero(np.isclose(grid.learning_rates, lr))
    column_value = math.inf if strategy == "none" else threshold
    (columns,) = np.nonzero(np.isclose(grid.thresholds, column_value))
    if not len(rows):
        raise ValueError(f"lr must be one of {tuple(grid.learning_rates)}, got {lr!r}")
    if not len(columns):
        raise ValueError(f"threshold must be one of {tuple(grid.thresholds)}, got {threshold!r}")
    return grid.run(int(rows[0]), int(columns[0]))


def describe(run: TrainingHistory, strategy: str, threshold: float, length: int = 10) -> str:
    """One line of text: the run's outcome, against the trivial baseline at ``length``."""
    how = "no clipping" if strategy == "none" else f"{strategy} clipping at c = {threshold:g}"
    if run.diverged:
        return f"{how}: <b>diverged</b> (NaN/inf) at step {run.steps_run - 1}"
    baseline = adding_baseline_mse(length)
    return (
        f"{how}: final loss {run.final_loss:.3f} "
        f"({run.final_loss / baseline:.2f} x the trivial baseline {baseline:.3f}), "
        f"clipped {100 * run.clip_rate:.0f}% of steps"
    )


def training_panel(
    lr: float = 1.0,
    threshold: float = 0.1,
    strategy: str = "norm",
    length: int = 10,
    *,
    grids: dict[tuple[int, str], GridResult] | None = None,
) -> SliderPanel:
    """Loss and gradient-norm curves of the chosen run, with the unclipped run at the same lr.

    ``grids`` maps ``(length, method)`` to a :func:`make_grid` result already computed (the
    notebook passes the one it drew); missing ones are computed on first use and kept.
    """
    cache: dict[tuple[int, str], GridResult] = dict(grids or {})

    def grid_for(length: int, strategy: str) -> GridResult:
        method = "norm" if strategy == "none" else strategy
        if (length, method) not in cache:
            cache[(length, method)] = make_grid(length, method)
        return cache[(length, method)]

    figure = new_figure(9.0, 3.6)
    loss_ax, norm_ax = figure.subplots(1, 2)
    steps = np.arange(GRID_STEPS)
    lines = {}
    for ax, key, limits, label in (
        (loss_ax, "loss", _LOSS_LIMITS, "mini-batch loss (MSE)"),
        (norm_ax, "grad_norm", _NORM_LIMITS, "gradient norm before clipping"),
    ):
        ax.set(xlim=(0, GRID_STEPS), ylim=limits, yscale="log", xlabel="SGD step", ylabel=label)
        reference = ax.plot(
            [], [], color=COLORS["original"], lw=1.0, alpha=0.6, label="no clipping"
        )
        chosen = ax.plot([], [], lw=1.4, color="black", label="chosen (green: norm, orange: value)")
        marks = ax.plot(
            [],
            [],
            ls="none",
            marker="X",
            ms=10,
            color=COLORS["diverged"],
            label="diverged (NaN/inf)",
        )
        lines[key] = (reference[0], chosen[0], marks[0])
    baseline_line = loss_ax.axhline(
        adding_baseline_mse(length), color="0.5", ls=":", lw=1.0, label="trivial baseline"
    )
    threshold_line = norm_ax.axhline(
        1.0, color=COLORS["threshold"], ls="--", lw=1.0, label="threshold c"
    )
    loss_ax.legend(loc="upper right", fontsize=7)
    norm_ax.legend(loc="upper right", fontsize=7)
    figure.suptitle(
        "adding problem: the chosen run and the unclipped run at the same lr", fontsize=10
    )
    figure.tight_layout()
    moving = [*(a for trio in lines.values() for a in trio), threshold_line, baseline_line]
    freeze_static_artists(figure, moving)
    readout = widgets.HTML()

    def draw(lr: float, threshold: float, strategy: str, length: int) -> None:
        grid = grid_for(length, strategy)
        reference = pick_run(grid, lr, threshold, "none")
        chosen = pick_run(grid, lr, threshold, strategy)
        color = COLORS["original"] if strategy == "none" else COLORS[strategy]
        for key, limits in (("loss", _LOSS_LIMITS), ("grad_norm", _NORM_LIMITS)):
            reference_line, chosen_line, marks = lines[key]
            reference_line.set_data(steps[: reference.steps_run], getattr(reference, key))
            chosen_line.set_data(steps[: chosen.steps_run], getattr(chosen, key))
            chosen_line.set_color(color)
            ends = [run.steps_run - 1 for run in (reference, chosen) if run.diverged]
            marks.set_data(ends, [limits[1] / 2] * len(ends))
        threshold_line.set_ydata([threshold, threshold])
        threshold_line.set_visible(strategy == "norm")
        baseline_line.set_ydata([adding_baseline_mse(length)] * 2)
        readout.value = (
            f"<b>lr = {lr:g}, T = {length}</b><br>{describe(chosen, strategy, threshold, length)}"
            f"<br>reference, {describe(reference, 'none', threshold, length)}"
        )

    controls = {
        "lr": widgets.SelectionSlider(
            options=LEARNING_RATES, value=lr, description="learning rate"
        ),
        "threshold": widgets.SelectionSlider(
            options=THRESHOLDS, value=threshold, description="threshold c"
        ),
        "strategy": widgets.ToggleButtons(
            options=STRATEGIES, value=strategy, description="clipping"
        ),
        "length": widgets.SelectionSlider(options=LENGTHS, value=length, description="length T"),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


def median_step_length(grid: GridResult) -> np.ndarray:
    r"""Median update length :math:`\eta\lVert\hat g\rVert` per run, as a grid (NaN: diverged)."""
    history = grid.history
    with np.errstate(invalid="ignore"):
        steps = history.learning_rates * np.nanmedian(history.applied_norm, axis=1)
    return np.where(history.diverged, np.nan, steps).reshape(grid.shape)


def stability_map_figure(
    grid: GridResult, baseline: float, *, figure: Figure | None = None
) -> Figure:
    """Left: final loss of every (lr, threshold) run, NaN where it diverged. Right: the same
    final losses against each run's median step length, clipped runs coloured by how often
    they clipped, unclipped runs in grey. Draws on ``figure`` (e.g. ``plt.figure()``) if
    given, else on a new detached one."""
    final = grid.final_loss
    figure = figure if figure is not None else new_figure(12.0, 4.6)
    map_ax, step_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1.0]})
    ratio = np.log10(final / baseline)
    image = map_ax.imshow(ratio, cmap="RdYlGn_r", vmin=-1, vmax=3, origin="lower", aspect="auto")
    map_ax.imshow(
        np.where(np.isnan(final), 1.0, np.nan),
        cmap="Greys",
        vmin=0,
        vmax=3,
        origin="lower",
        aspect="auto",
    )
    for (i, j), value in np.ndenumerate(final):
        diverged = np.isnan(value)
        map_ax.text(
            j,
            i,
            "NaN" if diverged else f"{value:.3g}",
            ha="center",
            va="center",
            fontsize=8,
            color=COLORS["diverged"] if diverged else "black",
        )
    labels = ["none" if math.isinf(c) else f"{c:g}" for c in grid.thresholds]
    map_ax.set_xticks(range(len(labels)), labels)
    map_ax.set_yticks(range(len(grid.learning_rates)), [f"{lr:g}" for lr in grid.learning_rates])
    steps = grid.history.loss.shape[1]
    map_ax.set(
        xlabel=f"{grid.method}-clipping threshold c",
        ylabel="learning rate η",
        title=f"final loss after {steps} steps (NaN: diverged)",
    )
    if math.isinf(grid.thresholds[-1]):
        map_ax.axvline(len(labels) - 1.5, color="black", lw=1)
    figure.colorbar(image, ax=map_ax, label="log10(final loss / baseline)")

    step = median_step_length(grid)
    clip_rate = grid.history.clip_rate.reshape(grid.shape)
    unclipped = np.isinf(grid.thresholds)[None, :] & np.ones(grid.shape, dtype=bool)
    points = step_ax.scatter(
        step[~unclipped],
        final[~unclipped],
        c=clip_rate[~unclipped],
        cmap="viridis",
        vmin=0,
        vmax=1,
        s=28,
        label="clipped runs",
    )
    step_ax.scatter(
        step[unclipped],
        final[unclipped],
        marker="s",
        s=40,
        color=COLORS["original"],
        label="no clipping (diverged runs not shown)",
    )
    step_ax.axhline(baseline, color="0.5", ls=":", lw=1, label="trivial baseline")
    step_ax.set(
        xscale="log",
        yscale="log",
        xlabel="median step length η‖ĝ‖",
        ylabel="final loss",
        title="what decides the outcome: the step length",
    )
    step_ax.legend(fontsize=7, loc="upper left")
    figure.colorbar(points, ax=step_ax, label="fraction of steps clipped")
    figure.tight_layout()
    return figure


def plot_seeds(
    ax: Axes, x: np.ndarray, values: np.ndarray, *, color: str, label: str, smooth: int = 1
) -> None:
    """Runs of one setting, ``values`` ``(seeds, len(x))``: a thin line per seed, a thick
    line for the median of the seeds still running, an x where a seed's curve ends in NaN;
    ``smooth > 1`` averages each curve over that many points first."""
    values = np.asarray(values, dtype=float)
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        values = np.stack([np.convolve(v, kernel, mode="valid") for v in values])
        x = np.asarray(x)[smooth - 1 :]
    for curve in values:
        ax.plot(x, curve, color=color, lw=0.7, alpha=0.45)
        finite = np.flatnonzero(np.isfinite(curve))
        if len(finite) and finite[-1] < len(curve) - 1:  # the run diverged: mark its end
            ax.plot(x[finite[-1]], curve[finite[-1]], "x", color=COLORS["diverged"], ms=7)
    finite = np.isfinite(values)
    median = np.full(values.shape[1], np.nan)
    alive = finite.any(axis=0)  # the median of the seeds still running at each point
    median[alive] = [
        np.median(column[ok]) for column, ok in zip(values.T[alive], finite.T[alive], strict=True)
    ]
    ax.plot(x, median, color=color, lw=2.0, label=label)


PANELS: dict[str, Callable[[], SliderPanel]] = {"training": training_panel}
