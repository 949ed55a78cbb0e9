r"""Panel for notebook 09: the tiny-GPT sweep, one run at a time.

The sweep (:func:`clipping_lib.lab.sweep.build_sweep`, every learning rate x clipping method
x seed of :data:`~clipping_lib.lab.sweep.SWEEP_LRS`, :data:`~clipping_lib.lab.sweep.METHODS`,
:data:`~clipping_lib.lab.sweep.SWEEP_SEEDS`, plus the spike-free reference
:data:`~clipping_lib.lab.sweep.CLEAN`) takes minutes, so it is cached in
:data:`~clipping_lib.lab.sweep.SWEEP_PATH`; the panel only picks the chosen run and the
unclipped run with the same learning rate and seed, and moves their loss and gradient-norm
curves. :func:`run_curves` is the pure part: settings in, curves and a readout out.
:func:`plot_final_loss` draws the sweep's summary, final loss against learning rate;
:func:`plot_spike_traces` draws the spike traces of section 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.axes import Axes

from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.sweep import CLEAN, CLEAN_CLIP, SWEEP_PATH, SweepResult, load_sweep
from clipping_lib.lab.widgets import SliderPanel

_LOSS_LIMITS = (2.0, 40.0)
_LOSS_TICKS = (2, 3, 5, 10, 20, 40)
_NORM_LIMITS = (1e-2, 1e3)
_STYLES = {  # colour, line style
    CLEAN: ("#999999", ":"), CLEAN_CLIP: (COLORS["norm"], ":"),
    "none": (COLORS["original"], "-"), "clip 1.0": (COLORS["norm"], "-"),
    "zclip": (COLORS["adaptive"], "--"), "zclip + max 1.0": (COLORS["adaptive"], "-"),
    "autoclip": (COLORS["threshold"], "-"), "skip": (COLORS["value"], "-"),
}  # fmt: skip


def plot_final_loss(ax: Axes, result: SweepResult, baseline: float | None = None) -> None:
    """Final validation loss against learning rate: the mean over seeds, bars from the
    smallest to the largest seed, one curve per method (offset a little to stay apart)."""
    table, lrs = result.final(), np.unique(result.lr)
    n = len(result.methods)
    for j, method in enumerate(result.methods):
        color, ls = _STYLES[method]
        mean = table[:, j].mean(axis=1)
        ax.errorbar(lrs * (1 + 0.03 * (j - (n - 1) / 2)), mean, ls=ls, color=color,
                    yerr=[mean - table[:, j].min(axis=1), table[:, j].max(axis=1) - mean],
                    marker="o", ms=3, capsize=2, lw=1, label=method)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="0.5", lw=0.8, ls="-.", label="unigram baseline")
    ax.set(xscale="log", xlabel="peak learning rate (AdamW)",
           ylabel=f"validation loss after {result.loss.shape[1]} steps",
           title=f"final loss against learning rate (mean, range over "
                 f"{len(np.unique(result.seed))} seeds)")  # fmt: skip
    ax.legend(fontsize="small", ncol=2)


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
        "method": widgets.ToggleButtons(options=result.methods, value=method, description="method"),
        "seed": widgets.SelectionSlider(
            options=tuple(int(s) for s in np.unique(result.seed)), value=seed, description="seed"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"modern": modern_panel}


def plot_spike_traces(axes: Sequence[Axes], traces: Mapping, spike_at: int) -> None:
    """Three panels for :func:`~clipping_lib.lab.adam_trace.trace_adamw` runs: the gradient
    norm before clipping, the sum of Adam's ``v``, and the fresh gain, per step (log scale),
    with the spike's step marked."""
    colors = (COLORS["original"], COLORS["norm"], COLORS["threshold"])
    for (name, trace), color in zip(traces.items(), colors, strict=False):
        axes[0].plot(trace.grad_norm, color=color, label=name)
        axes[1].plot(trace.v_sum, color=color, label=name)
        axes[2].plot(trace.fresh_gain, color=color, label=name)
    titles = ("gradient norm (before clipping)", "sum of Adam's v",
              "fresh gain: median |g| / sqrt(v)")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.axvline(spike_at, color=COLORS["diverged"], lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="step", title=title)
    axes[0].legend(fontsize="small")
