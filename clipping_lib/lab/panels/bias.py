r"""Panel for notebook 06: where clipped SGD settles on :math:`x^2/2` under noise.

For the chosen noise and threshold :math:`c`, the panel draws the expected clipped
gradient :math:`F(x) = \mathbb{E}[\mathrm{clip}_c(x + \xi)]` next to the true gradient
:math:`x`, and marks the point :math:`x_c` where :math:`F` vanishes: small-step clipped
SGD settles there (:mod:`clipping_lib.lab.noise`). Symmetric noise keeps :math:`x_c = 0`;
skewed noise moves it, the more the smaller :math:`c`.

:func:`bias_profile` is the pure computation the panel draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch

from clipping_lib.lab.noise import NOISES, clipping_fixed_point, expected_clipped_gradient
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel

X_RANGE = (-3.0, 3.0)
CURVE_POINTS = 31


@dataclass(frozen=True)
class BiasProfile:
    """What the panel shows for one threshold and noise."""

    x: np.ndarray  # where the expected clipped gradient is evaluated
    expected: np.ndarray  # E[clip_c(x + xi)] at each x
    fixed_point: float  # x_c, where it vanishes: the bias of clipped SGD


def bias_profile(threshold: float, noise: str, points: int = CURVE_POINTS) -> BiasProfile:
    """The expected clipped gradient on :data:`X_RANGE` and its root, for one setting."""
    x = torch.linspace(*X_RANGE, points, dtype=torch.float64)
    expected = expected_clipped_gradient(x, threshold, noise)
    fixed_point = float(clipping_fixed_point(threshold, noise))
    return BiasProfile(x.numpy(), expected.numpy(), fixed_point)


def bias_panel(threshold: float = 0.5, noise: str = "exponential") -> SliderPanel:
    """Expected clipped gradient against the true one, with the point clipped SGD settles at."""
    figure = new_figure(5.6, 3.8)
    ax = figure.add_subplot()
    ax.plot(X_RANGE, X_RANGE, color="0.5", ls="--", lw=1, label="true gradient x")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.axvline(0.0, color="0.3", lw=0.8)
    (curve,) = ax.plot([], [], color=COLORS["norm"], lw=2, label="E[clip_c(x + ξ)]")
    (root,) = ax.plot([], [], "o", ms=8, color=COLORS["value"], label="x_c: SGD settles here")
    ax.set(xlim=X_RANGE, ylim=(-3.2, 3.2), xlabel="x", ylabel="expected gradient")
    ax.set_title("clipped SGD on x²/2: where the clipped gradient vanishes", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    freeze_static_artists(figure, [curve, root])
    readout = widgets.HTML()

    def draw(threshold: float, noise: str) -> None:
        profile = bias_profile(threshold, noise)
        curve.set_data(profile.x, profile.expected)
        root.set_data([profile.fixed_point], [0.0])
        readout.value = (
            f"<b>{noise}</b> noise, c = {threshold:.3g}: clipped SGD settles at "
            f"x<sub>c</sub> = {round(profile.fixed_point, 6) + 0.0:+.4f} (optimum 0)"
        )

    controls = {
        "threshold": widgets.FloatLogSlider(
            value=threshold, base=10, min=-1.3, max=1.0, step=0.05, description="threshold c"
        ),
        "noise": widgets.ToggleButtons(options=NOISES, value=noise, description="noise"),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {"bias": bias_panel}
