r"""Panel for notebook 07: threshold rules replayed on a recorded gradient-norm sequence.

The panel takes the global gradient norms of one seeded training run (the first
:data:`WATCH` steps on the spiky adding problem of
:func:`clipping_lib.lab.spikes.spiky_adding_task`, trained with fixed norm clipping at 1) and
shows, for the rule and parameters chosen, the threshold at every step and
the steps it would clip. It *replays* the rules on fixed norms: it shows what each rule
decides, not how training would change afterwards (the notebook's comparison runs do).

The replays are NumPy versions of the library's clippers, fast enough for a slider
(the tests check them against :class:`~clipping_lib.adaptive.AutoClip` and
:class:`~clipping_lib.adaptive.ZClip` step by step):

* fixed: :math:`c_t = c`;
* AutoClip: :math:`c_t = \operatorname{percentile}_p(n_1, \dots, n_t)`;
* ZClip: :math:`c_t = \mu + z_{thr}(\sigma + \varepsilon)` after the warm-up (``inf``
  before), with the EMA statistics fed the clipped norms.

The module also holds the notebook's figures that are more than a few lines:
:func:`plot_norm_distribution` and :func:`plot_comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np
from matplotlib.axes import Axes

from clipping_lib.lab.compare import Comparison
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure, plot_norm_history
from clipping_lib.lab.spikes import spiky_adding_task
from clipping_lib.lab.training import train_rnn
from clipping_lib.lab.widgets import SliderPanel
from clipping_lib.monitor import NormHistory
from clipping_lib.strategies import NormClip

METHODS = ("fixed", "AutoClip", "ZClip")
RUN = {"lr": 0.1, "hidden_size": 16, "batch_size": 32}  # notebook 07's model and plain SGD
STEPS = 1500  # the budget of notebook 07's comparison
WATCH = 300  # its single runs (monitoring, AutoClip, ZClip) watch the first steps only


def autoclip_thresholds(norms: np.ndarray, percentile: float) -> np.ndarray:
    """AutoClip's threshold at each step: the percentile of the norms up to and including it."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return np.array([np.percentile(norms[: t + 1], percentile) for t in range(len(norms))])


def zclip_thresholds(
    norms: np.ndarray,
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    warmup_steps: int = 25,
    eps: float = 1e-6,
) -> np.ndarray:
    """ZClip's trigger per step, :math:`\\mu + z_{thr}(\\sigma + \\varepsilon)` (inf in warm-up)."""
    if not 0 < alpha < 1 or z_thresh <= 0 or warmup_steps < 1:
        raise ValueError("need 0 < alpha < 1, z_thresh > 0 and warmup_steps >= 1")
    thresholds = np.full(len(norms), math.inf)
    warmup = norms[:warmup_steps]
    mean, var = float(np.mean(warmup)), float(np.var(warmup))
    for t in range(warmup_steps, len(norms)):
        std = math.sqrt(var)
        thresholds[t] = mean + z_thresh * (std + eps)
        z = (norms[t] - mean) / (std + eps)
        target = mean + z_thresh**2 / z * std if z > z_thresh else norms[t]
        mean = alpha * mean + (1 - alpha) * target
        var = alpha * var + (1 - alpha) * (target - mean) ** 2
    return thresholds


def replay(
    norms: np.ndarray,
    method: str,
    *,
    max_norm: float = 1.0,
    percentile: float = 10.0,
    z_thresh: float = 2.5,
    alpha: float = 0.97,
) -> NormHistory:
    """The thresholds ``method`` sets on ``norms``, and the steps it clips (norm > threshold)."""
    norms = np.asarray(norms, dtype=np.float64)
    if method == "fixed":
        thresholds = np.full(len(norms), float(max_norm))
    elif method == "AutoClip":
        thresholds = autoclip_thresholds(norms, percentile)
    elif method == "ZClip":
        thresholds = zclip_thresholds(norms, alpha, z_thresh)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return NormHistory(norms, thresholds, norms > thresholds)


def recorded_norms(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Norms before clipping of notebook 07's run with ``NormClip(1.0)`` over its first
    :data:`WATCH` steps, and the spike steps among them."""
    task, spike_steps = spiky_adding_task(STEPS, RUN["batch_size"], seed=seed)
    history = train_rnn(task, NormClip(1.0), steps=WATCH, seed=seed, **RUN)
    return history.grad_norm, spike_steps[spike_steps < WATCH]


def adaptive_panel(
    norms: np.ndarray | None = None, spike_steps: np.ndarray | None = None
) -> SliderPanel:
    """Choose a rule and its parameter; see its threshold and clip events over the run."""
    if norms is None or spike_steps is None:
        norms, spike_steps = recorded_norms()
    norms = np.asarray(norms, dtype=np.float64)
    first = replay(norms, "fixed")
    figure = new_figure(8.4, 3.6)
    ax = figure.add_subplot()
    artists = plot_norm_history(ax, first, label="recorded norm")
    ax.plot(spike_steps, norms[spike_steps] * 1.6, "v", color=COLORS["diverged"], ms=5,
            label="injected spike")  # fmt: skip
    artists["clipped"].set_label("would be clipped")
    ax.set(ylim=(0.8 * norms.min(), 60 * norms.max()), xlim=(0, len(norms)))
    ax.legend(loc="upper center", fontsize="small", ncols=4)
    ax.set_title("which steps would each rule clip?", fontsize=10)
    figure.tight_layout()
    steps = np.arange(len(norms))
    freeze_static_artists(figure, [artists["threshold"], artists["clipped"]])
    readout = widgets.HTML()

    def draw(method: str, max_norm: float, percentile: float, z_thresh: float, alpha: float):
        history = replay(
            norms, method, max_norm=max_norm, percentile=percentile, z_thresh=z_thresh,
            alpha=alpha,
        )  # fmt: skip
        artists["threshold"].set_ydata(
            np.where(np.isfinite(history.threshold), history.threshold, np.nan)
        )
        artists["clipped"].set_data(steps[history.clipped], norms[history.clipped])
        caught = int(history.clipped[spike_steps].sum())
        used = {"fixed": f"c = {max_norm:.2f}", "AutoClip": f"p = {percentile:.0f}",
                "ZClip": f"z = {z_thresh:.1f}, α = {alpha:.2f}"}[method]  # fmt: skip
        readout.value = (
            f"<b>{method}</b> ({used})<br>clip rate {history.clip_rate:.1%} "
            f"({int(history.clipped.sum())} of {len(norms)} steps)<br>"
            f"spikes clipped: {caught} of {len(spike_steps)}"
        )

    controls = {
        "method": widgets.ToggleButtons(options=METHODS, value="fixed", description="rule"),
        "max_norm": widgets.FloatLogSlider(
            value=1.0, base=10, min=-1, max=4, step=0.05, description="fixed c"
        ),
        "percentile": widgets.FloatSlider(
            value=10.0, min=1.0, max=100.0, step=1.0, description="AutoClip p"
        ),
        "z_thresh": widgets.FloatSlider(
            value=2.5, min=0.5, max=6.0, step=0.1, description="ZClip z"
        ),
        "alpha": widgets.FloatSlider(
            value=0.97, min=0.5, max=0.99, step=0.01, description="ZClip α"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


def plot_norm_distribution(ax: Axes, norms: np.ndarray, percentiles: dict[float, float]) -> None:
    """Histogram of ``norms`` on log-spaced bins, with a vertical line per percentile."""
    norms = np.asarray(norms, dtype=np.float64)
    bins = np.geomspace(norms.min(), norms.max(), 40)
    ax.hist(norms, bins=bins, color=COLORS["original"], alpha=0.7)
    for (q, value), style in zip(percentiles.items(), (":", "--", "-.", "-"), strict=False):
        ax.axvline(value, color=COLORS["threshold"], ls=style, label=f"p{q:g}")
    ax.set(xscale="log", xlabel="global gradient norm", ylabel="steps")
    ax.legend(fontsize="small")


def plot_comparison(
    axes: tuple[Axes, Axes], comparison: Comparison, colors: dict[str, str]
) -> None:
    """Left: each method's held-out loss over training (median over seeds, band from the
    best to the worst seed). Right: each seed's final loss per method. Both log scale,
    with the trivial baseline dashed; a run that diverged is drawn as an x at the top."""
    curves, finals = axes
    steps = comparison.eval_steps
    reached = comparison.final_loss[np.isfinite(comparison.final_loss)]
    top = 3 * max(comparison.baseline, reached.max(initial=0.0))  # diverged runs: x up here
    for row, name in enumerate(comparison.methods):
        color = COLORS.get(colors[name], colors[name])
        losses = comparison.test_loss[row]
        with np.errstate(all="ignore"):
            alive = np.isfinite(losses).all(axis=0)
            if alive.any():
                median = np.median(losses[:, alive], axis=0)
                curves.plot(steps[alive], median, color=color, lw=1.6, label=name)
                low, high = losses[:, alive].min(axis=0), losses[:, alive].max(axis=0)
                curves.fill_between(steps[alive], low, high, color=color, alpha=0.15)
        final = comparison.final_loss[row]
        jitter = np.linspace(-0.2, 0.2, len(final))
        ok = np.isfinite(final)
        finals.plot(row + jitter[ok], final[ok], "o", ms=4, color=color)
        finals.plot(row + jitter[~ok], np.full((~ok).sum(), top), "x", ms=6, color=color)
    for ax in axes:
        ax.axhline(comparison.baseline, color=COLORS["threshold"], ls="--", lw=1,
                   label="trivial baseline")  # fmt: skip
        ax.set_yscale("log")
    curves.set(xlabel="step", ylabel="held-out loss", ylim=(None, top * 1.5))
    curves.legend(fontsize="small", ncols=2)
    finals.set_xticks(range(len(comparison.methods)), comparison.methods, rotation=30,
                      ha="right", fontsize="small")  # fmt: skip
    finals.set(ylabel="final held-out loss (one dot per seed; x: diverged)",
               ylim=(None, top * 1.5))  # fmt: skip


PANELS: dict[str, Callable[[], SliderPanel]] = {"adaptive": adaptive_panel}
