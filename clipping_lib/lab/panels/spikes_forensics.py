r"""Panel for notebook 12: Adam's second-moment collapse, coordinate by coordinate.

:func:`collapse_curves` is the pure part. It runs Adam's recurrences on a population of
coordinates whose gradients are noisy around a small mean (signal-to-noise ratio about
0.3, as in steady training): ``steady`` ordinary steps, then ``quiet`` steps of zero
gradient (in closed form: :math:`m \leftarrow \beta_1^K m`, :math:`v \leftarrow \beta_2^K
v`), then ordinary steps again. It returns the update RMS per step in units of the steady
median, so the first step after the stretch reads directly as "times a normal update".
Gradient clipping is a fixed threshold on the population's gradient norm, ``grad_clip``
times the median norm of the steady steps, applied at every step as ``clip_grad_norm_``
does: ordinary gradients before and after the stretch are scaled alike, and Adam ignores
a common scale. Update clipping is Adafactor's rule on the whole
population (:func:`clipping_lib.lab.spike_mechanisms.update_rms_clip`).
"""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import numpy as np
from matplotlib.axes import Axes

from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.spike_mechanisms import collapse_bound
from clipping_lib.lab.widgets import SliderPanel

__all__ = ["collapse_curves", "collapse_panel", "plot_runs"]

_STEADY, _AFTER, _COORDS = 150, 50, 256


def collapse_curves(
    quiet: int,
    beta2: float,
    *,
    grad_clip: float | None = None,
    update_clip: float | None = None,
    eps: float = 1e-8,
    beta1: float = 0.9,
    seed: int = 0,
) -> dict:
    """Update RMS per step (steady steps, then the steps after a ``quiet``-step stretch of
    zero gradients), in units of the steady median; the peak; the bound of
    :func:`collapse_bound` in the same units; and a readout."""
    if not (isinstance(quiet, int) and quiet >= 0):
        raise ValueError(f"quiet must be an int >= 0, got {quiet!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be None or > 0, got {grad_clip!r}")
    rng = np.random.default_rng(seed)
    scale = 1e-3 * np.exp(rng.normal(0, 1, _COORDS))  # coordinates of different sizes
    mean = 0.3 * scale * rng.choice([-1.0, 1.0], _COORDS)
    noise = rng.normal(0, 1, (_STEADY + _AFTER, _COORDS)) * scale
    m, v, t = np.zeros(_COORDS), np.zeros(_COORDS), 0
    rms = []

    grads = mean + noise
    norms = np.sqrt((grads**2).sum(axis=1))
    if grad_clip is not None:
        threshold = grad_clip * np.median(norms[:_STEADY])
        grads = grads * np.minimum(1.0, threshold / norms)[:, None]

    def step(g: np.ndarray) -> float:
        nonlocal m, v, t
        t += 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        u = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        r = float(np.sqrt(np.mean(u * u)))
        return min(r, update_clip) if update_clip is not None else r

    for i in range(_STEADY):
        rms.append(step(grads[i]))
    m, v, t = m * beta1**quiet, v * beta2**quiet, t + quiet
    for i in range(_STEADY, _STEADY + _AFTER):
        rms.append(step(grads[i]))
    rms = np.array(rms)
    unit = np.median(rms[_STEADY // 2 : _STEADY])
    relative = rms / unit
    peak = float(relative[_STEADY:].max())
    bound = collapse_bound(beta1, beta2) / unit
    readout = (
        f"<b>{quiet} quiet steps, β2 = {beta2:g}</b><br>first update after the stretch: "
        f"{relative[_STEADY]:.1f} x a normal one (peak {peak:.1f} x)<br>"
        f"limit (1 - β1)/√(1 - β2) = {collapse_bound(beta1, beta2):.2f} lr = {bound:.1f} x"
    )
    return {"relative": relative, "peak": peak, "bound": bound, "readout": readout}


def collapse_panel(quiet: int = 3000, beta2: float = 0.999) -> SliderPanel:
    """Update size after a quiet stretch: stretch length, β2, a gradient clip, an update clip."""
    figure = new_figure(7.5, 3.2)
    ax = figure.subplots()
    steps = np.arange(_STEADY + _AFTER)
    ax.set(xlim=(0, len(steps)), ylim=(0.1, 30), yscale="log", xlabel="step (the quiet "
           "stretch is cut out at the dashed line)", ylabel="update RMS / normal")  # fmt: skip
    ax.axvline(_STEADY, color="0.5", ls="--", lw=1)
    ax.axhline(1.0, color="0.8", lw=1)
    line = ax.plot([], [], color=COLORS["norm"], lw=1.2, label="Adam's update")[0]
    bound = ax.axhline(1.0, color=COLORS["threshold"], ls=":", lw=1, label="(1-β1)/√(1-β2)")
    ax.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    freeze_static_artists(figure, [line, bound])
    readout = widgets.HTML()

    def draw(quiet: int, beta2: float, grad_clip: str, update_clip: str) -> None:
        clip = None if update_clip == "off" else float(update_clip)
        gclip = None if grad_clip == "off" else float(grad_clip)
        curves = collapse_curves(quiet, beta2, grad_clip=gclip, update_clip=clip)
        line.set_data(steps, curves["relative"])
        bound.set_ydata([curves["bound"]] * 2)
        readout.value = curves["readout"]

    controls = {
        "quiet": widgets.SelectionSlider(
            options=[0, 10, 30, 100, 300, 1000, 3000, 10000], value=quiet,
            description="quiet steps"),
        "beta2": widgets.SelectionSlider(
            options=[0.9, 0.95, 0.99, 0.999], value=beta2, description="β2"),
        "grad_clip": widgets.ToggleButtons(
            options=["off", "2", "0.5", "0.1"], value="off",
            description="grad clip", tooltips=["threshold in units of the median norm"]),
        "update_clip": widgets.ToggleButtons(
            options=["off", "1.0"], value="off", description="update clip"),
    }  # fmt: skip
    return SliderPanel(figure, controls, draw, readout=readout)


def plot_runs(
    ax: Axes,
    curves: Mapping[str, np.ndarray],
    *,
    x: np.ndarray | None = None,
    ylabel: str,
    title: str,
    logy: bool = True,
    smooth: int = 1,
) -> None:
    """One line per named curve (a running median over ``smooth`` steps if > 1), legend."""
    palette = ["#444444", "#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    for (name, y), color in zip(curves.items(), palette, strict=False):
        y = np.asarray(y, dtype=float)
        if smooth > 1:
            windows = np.lib.stride_tricks.sliding_window_view(y, smooth)
            y = np.concatenate([np.full(smooth - 1, np.nan), np.median(windows, axis=1)])
        ax.plot(np.arange(len(y)) if x is None else x, y, color=color, lw=1.1, label=name)
    ax.set(ylabel=ylabel, title=title, xlabel="step", yscale="log" if logy else "linear")
    ax.legend(fontsize="small")
