r"""Panel for notebook 09: the tiny-GPT sweep, one run at a time.

The sweep (:func:`clipping_lib.lab.sweep.build_sweep`, every learning rate x clipping method
x seed of :data:`~clipping_lib.lab.sweep.SWEEP_LRS`, :data:`~clipping_lib.lab.sweep.METHODS`,
:data:`~clipping_lib.lab.sweep.SWEEP_SEEDS`) takes minutes, so it is cached in
:data:`~clipping_lib.lab.sweep.SWEEP_PATH`; the panel only picks the chosen run and the
unclipped run with the same learning rate and seed, and moves their loss and gradient-norm
curves. :func:`run_curves` is the pure part: settings in, curves and a readout out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np

from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.sweep import METHODS, SWEEP_PATH, SweepResult, load_sweep
from clipping_lib.lab.widgets import SliderPanel

_LOSS_LIMITS = (2.0, 40.0)
_LOSS_TICKS = (2, 3, 5, 10, 20, 40)
_NORM_LIMITS = (1e-2, 1e3)


def run_curves(result: SweepResult, lr: float, method: str, seed: int) -> dict:
    """The chosen run's curves, the unclipped run's at the same lr and seed, and a readout."""
    chosen = result.select(lr, method, seed)
    reference = result.select(lr, "none", seed)
    acted = np.flatnonzero(result.clipped[chosen])
    verb = "skipped" if method == "skip" else "clipped"
    final, base = result.val_loss[chosen], result.val_loss[reference]
    outcome = "diverged" if not math.isfinite(final) else f"validation loss {final:.3f}"
    readout = (
        f"<b>lr = {lr:g}, {method}, seed {seed}</b><br>{outcome} "
        f"(no clipping: {base:.3f})<br>{verb} {len(acted)} of {result.loss.shape[1]} steps"
    )
    return {
        "loss": result.loss[chosen],
        "grad_norm": result.grad_norm[chosen],
        "reference_loss": result.loss[reference],
        "reference_norm": result.grad_norm[reference],
        "acted": acted,
        "readout": readout,
    }


def modern_panel(
    lr: float = 0.3, method: str = "clip 1.0", seed: int = 0, *, result: SweepResult | None = None
) -> SliderPanel:
    """Loss and gradient norm of one sweep run against the unclipped run (same lr and seed)."""
    result = load_sweep(SWEEP_PATH) if result is None else result
    steps = np.arange(result.loss.shape[1])
    figure = new_figure(9.0, 3.4)
    loss_ax, norm_ax = figure.subplots(1, 2)
    loss_ax.set(xlim=(0, len(steps)), ylim=_LOSS_LIMITS, yscale="log", xlabel="step",
                ylabel="training loss (nats / char)")  # fmt: skip
    loss_ax.set_yticks(_LOSS_TICKS, [str(t) for t in _LOSS_TICKS])
    loss_ax.minorticks_off()
    norm_ax.set(xlim=(0, len(steps)), ylim=_NORM_LIMITS, yscale="log", xlabel="step",
                ylabel="gradient norm before clipping")  # fmt: skip
    for step in result.config.corrupt_steps:
        for ax in (loss_ax, norm_ax):
            ax.axvline(step, color="0.8", lw=3, zorder=0)
    norm_ax.axhline(
        result.config.max_norm, color=COLORS["threshold"], ls="--", lw=1, label="threshold 1.0"
    )
    reference = {"color": COLORS["original"], "lw": 1, "alpha": 0.6, "label": "no clipping"}
    ref_loss = loss_ax.plot([], [], **reference)[0]
    loss = loss_ax.plot([], [], color=COLORS["norm"], lw=1.2, label="chosen method")[0]
    ref_norm = norm_ax.plot([], [], **reference)[0]
    norm = norm_ax.plot([], [], color=COLORS["norm"], lw=1.2, label="chosen method")[0]
    marks = norm_ax.plot([], [], ls="none", marker="o", ms=3, color=COLORS["diverged"],
                         label="clipped / skipped")[0]  # fmt: skip
    loss_ax.legend(loc="upper right", fontsize=7)
    norm_ax.legend(loc="upper right", fontsize=7)
    figure.suptitle("tiny GPT, AdamW: grey bands are the corrupted batches", fontsize=10)
    figure.tight_layout()
    freeze_static_artists(figure, [ref_loss, loss, ref_norm, norm, marks])
    readout = widgets.HTML()

    def draw(lr: float, method: str, seed: int) -> None:
        curves = run_curves(result, lr, method, seed)
        ref_loss.set_data(steps, curves["reference_loss"])
        loss.set_data(steps, curves["loss"])
        ref_norm.set_data(steps, curves["reference_norm"])
        norm.set_data(steps, curves["grad_norm"])
        marks.set_data(curves["acted"], curves["grad_norm"][curves["acted"]])
        readout.value = curves["readout"]

    lrs = tuple(float(x) for x in np.unique(result.lr))
    controls = {
        "lr": widgets.SelectionSlider(options=lrs, value=lr, description="peak lr"),
        "method": widgets.ToggleButtons(options=METHODS, value=method, description="method"),
        "seed": widgets.SelectionSlider(
            options=tuple(int(s) for s in np.unique(result.seed)), value=seed, description="seed"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"modern": modern_panel}
