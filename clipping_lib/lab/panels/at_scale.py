r"""Panel for notebook 08: per-sample clipping (DP-SGD) against batch clipping.

The batch of :func:`clipping_lib.lab.parallel.make_batch` has four outlier examples
(targets x 20) among 32. Batch clipping rescales the mean gradient, so its direction is
the outliers' whatever the threshold; per-sample clipping bounds every example's
gradient by :math:`C` before averaging, which moves the update back towards the
gradient of the clean examples as :math:`C` falls below the outliers' norms.
:func:`per_sample_view` is the pure computation the panel draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch

from clipping_lib._checks import check_threshold
from clipping_lib.lab.parallel import make_batch, make_model
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel
from clipping_lib.per_sample import per_sample_grads

OUTLIERS = slice(28, 32)  # make_batch(32): the last eighth are the outliers


def example_gradients(seed: int = 0) -> np.ndarray:
    """Per-sample gradients of the MLP of notebook 08 on its batch, as a ``(32, P)`` array."""
    model = make_model(seed)
    x, y = make_batch(32, seed)
    grads = per_sample_grads(model, lambda out, t: torch.mean((out - t) ** 2), x, y)
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1).double().numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass(frozen=True)
class PerSampleView:
    norms: np.ndarray  # ||g_i|| per example
    clipped_norms: np.ndarray  # min(||g_i||, C)
    update: np.ndarray  # mean of the per-sample clipped gradients
    cosine_to_clean: float  # cosine between update and the mean gradient of clean examples
    batch_cosine_to_clean: float  # the same for batch clipping (any threshold)


def per_sample_view(grads: np.ndarray, max_norm: float, clean: np.ndarray) -> PerSampleView:
    r"""Clip each row of ``grads`` to norm ``max_norm`` (exactly), average, compare to ``clean``."""
    max_norm = check_threshold(max_norm, "max_norm")
    if max_norm == 0:
        raise ValueError("max_norm must be > 0")
    norms = np.linalg.norm(grads, axis=1)
    scale = max_norm / np.maximum(norms, max_norm)
    update = (grads * scale[:, None]).mean(axis=0)
    return PerSampleView(
        norms=norms,
        clipped_norms=norms * scale,
        update=update,
        cosine_to_clean=_cosine(update, clean),
        batch_cosine_to_clean=_cosine(grads.mean(axis=0), clean),
    )


def per_sample_panel(max_norm: float = 3.0) -> SliderPanel:
    """Bars of per-example gradient norms before/after clipping; cosine to the clean gradient."""
    grads = example_gradients()
    clean = np.delete(grads, np.arange(32)[OUTLIERS], axis=0).mean(axis=0)
    grid = np.geomspace(0.1, 100.0, 61)
    curve = [per_sample_view(grads, c, clean).cosine_to_clean for c in grid]
    first = per_sample_view(grads, max_norm, clean)

    figure = new_figure(9.0, 3.6)
    bars_ax, cos_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    index = np.arange(len(grads))
    bars_ax.bar(index, first.norms, color="0.8", label="before: $\\|g_i\\|$")
    (after,) = bars_ax.plot(
        index, first.clipped_norms, "_", ms=9, mew=3, color=COLORS["norm"], label="after clipping"
    )
    level = bars_ax.axhline(max_norm, color=COLORS["threshold"], ls="--", label="C")
    bars_ax.axvspan(27.5, 31.5, color=COLORS["diverged"], alpha=0.1, label="outliers")
    bars_ax.set(yscale="log", ylim=(0.05, 100), xlabel="example i", ylabel="gradient norm")
    bars_ax.set_title("per-example gradients, clipped to C", fontsize=10)
    bars_ax.legend(fontsize=7, loc="upper left")
    cos_ax.plot(grid, curve, color=COLORS["norm"], label="per-sample clipping")
    cos_ax.axhline(
        first.batch_cosine_to_clean, color=COLORS["value"], label="batch clipping (any c)"
    )
    (marker,) = cos_ax.plot([max_norm], [first.cosine_to_clean], "o", color=COLORS["threshold"])
    cos_ax.set(xscale="log", ylim=(0, 1.02), xlabel="per-sample threshold C")
    cos_ax.set(ylabel="cosine(update, clean gradient)")
    cos_ax.set_title("direction of the update", fontsize=10)
    cos_ax.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    freeze_static_artists(figure, [after, level, marker])
    readout = widgets.HTML()

    def draw(max_norm: float) -> None:
        view = per_sample_view(grads, max_norm, clean)
        after.set_ydata(view.clipped_norms)
        level.set_ydata([max_norm, max_norm])
        marker.set_data([max_norm], [view.cosine_to_clean])
        clipped = int(np.sum(view.norms > max_norm))
        readout.value = (
            f"C = {max_norm:.2f}: {clipped} of {len(grads)} examples clipped<br>"
            f"cosine to the clean gradient: per-sample {view.cosine_to_clean:.3f}, "
            f"batch {view.batch_cosine_to_clean:.3f}<br>"
            f"largest influence of one example on the update: ≤ C/B = {max_norm / 32:.3f}"
        )

    controls = {
        "max_norm": widgets.FloatLogSlider(
            value=max_norm, base=10, min=-1, max=2, step=0.05, description="C"
        )
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"per_sample": per_sample_panel}
