r"""Panel for notebook 05: training curves of a tanh RNN for a chosen lr, threshold and method.

Every (learning rate, threshold) pair of one sequence length and one clipping method is
trained at once by :func:`make_grid` (a batched :func:`~clipping_lib.training.train_grid`
call, a few seconds); the panel keeps each grid it has computed, so moving the learning
rate or threshold slider only picks a stored run and redraws. A length or method not yet
seen costs one grid the first time.

The runs: the adding problem (:func:`~clipping_lib.tasks.adding_problem`, 4096 seeded
sequences), a :class:`~clipping_lib.training.TanhRNN` with 32 hidden units, plain SGD on
mini-batches of 32, ``GRID_STEPS`` steps, the same initial weights and batches in every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np

from clipping_lib.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.tasks import ADDING_BASELINE_MSE, adding_problem
from clipping_lib.training import GridResult, TrainingHistory, train_grid
from clipping_lib.widgets import SliderPanel

LEARNING_RATES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
THRESHOLDS = (0.03, 0.1, 0.3, 1.0, 3.0)
LENGTHS = (10, 20, 40)
STRATEGIES = ("none", "norm", "value")
GRID_STEPS = 200
HIDDEN_SIZE = 32
BATCH_SIZE = 32
N_SEQUENCES = 4096
SEED = 0

_LOSS_LIMITS = (3e-2, 1e5)
_NORM_LIMITS = (1e-2, 1e6)


def make_grid(length: int = 20, method: str = "norm", *, steps: int = GRID_STEPS) -> GridResult:
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


def describe(run: TrainingHistory, strategy: str, threshold: float) -> str:
    """One line of text: the run's outcome."""
    how = "no clipping" if strategy == "none" else f"{strategy} clipping at c = {threshold:g}"
    if run.diverged:
        return f"{how}: <b>diverged</b> (NaN/inf) at step {run.steps_run - 1}"
    return (
        f"{how}: final loss {run.final_loss:.3f} "
        f"({run.final_loss / ADDING_BASELINE_MSE:.2f} x the 1/6 baseline), "
        f"clipped {100 * run.clip_rate:.0f}% of steps"
    )


def training_panel(
    lr: float = 1.0,
    threshold: float = 0.1,
    strategy: str = "norm",
    length: int = 20,
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
    loss_ax.axhline(ADDING_BASELINE_MSE, color="0.5", ls=":", lw=1.0, label="predict 1: 1/6")
    threshold_line = norm_ax.axhline(
        1.0, color=COLORS["threshold"], ls="--", lw=1.0, label="threshold c"
    )
    loss_ax.legend(loc="upper right", fontsize=7)
    norm_ax.legend(loc="upper right", fontsize=7)
    figure.suptitle(
        "adding problem: the chosen run and the unclipped run at the same lr", fontsize=10
    )
    figure.tight_layout()
    freeze_static_artists(figure, [*(a for trio in lines.values() for a in trio), threshold_line])
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
        readout.value = (
            f"<b>lr = {lr:g}, T = {length}</b><br>{describe(chosen, strategy, threshold)}"
            f"<br>reference, {describe(reference, 'none', threshold)}"
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


PANELS: dict[str, Callable[[], SliderPanel]] = {"training": training_panel}
