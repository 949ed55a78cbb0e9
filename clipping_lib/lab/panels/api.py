r"""Panels for notebooks 03 (the PyTorch API) and 04 (clipping by hand).

* ``norm_clipping`` (03): one fixed set of gradients clipped with
  :func:`clipping_lib.clip_grad_norm_` for a threshold ``max_norm``, a norm type and
  an ``eps``: the norm of every tensor before and after, and the total norm returned
  (before clipping) against the total norm left (after), which with PyTorch's
  :math:`\varepsilon = 10^{-6}` falls short of ``max_norm`` by
  :math:`c\,\varepsilon / (\lVert g\rVert + \varepsilon)`.
* ``fp16_norm`` (04): the L2 norm of a float16 gradient of ``n`` equal elements of
  size ``m``, computed four ways, against the exact norm :math:`m\sqrt{n}`. Squares
  in float16 overflow above :math:`|g| \approx 256` and their float16 sum above 65504;
  below :math:`|g| \approx 7.8\cdot 10^{-3}` the squares are subnormal (inaccurate) and
  below :math:`\approx 2\cdot 10^{-4}` they are 0. Pre-scaling by :math:`\max|g|` or
  accumulating in float32 avoids both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from torch import Tensor

from clipping_lib._checks import check_norm_type
from clipping_lib.clip import clip_grad_norm_, get_total_norm
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel

# ---------------------------------------------------------------- 03: norm clipping

NORM_TYPES = {"1": 1.0, "2": 2.0, "inf": math.inf}
EPS_CHOICES = {"PyTorch (1e-6)": 1e-6, "exact (0)": 0.0}
NORM_AXIS_LIMITS = (1e-4, 1e3)  # holds every norm the panel's controls can produce
PARAMETER_NAMES = ("emb.weight", "rnn.W", "rnn.U", "rnn.b", "head.W", "head.b")


def example_gradients(seed: int = 0) -> list[Tensor]:
    """Six float64 gradients of a small RNN's shapes, with very different sizes."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(20, 8), (16, 8), (16, 16), (16,), (4, 16), (4,)]
    scales = [0.02, 0.1, 0.3, 0.2, 0.08, 0.15]
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64) * scale
        for shape, scale in zip(shapes, scales, strict=True)
    ]


def clip_report(
    grads: list[Tensor], max_norm: float, norm_type: float | str = 2.0, eps: float = 1e-6
) -> dict[str, Tensor]:
    """Clip copies of ``grads`` with :func:`clip_grad_norm_`; norms before and after.

    Returns per-tensor norms ``before`` and ``after`` (1-d), the ``returned`` total
    norm (before clipping, what ``clip_grad_norm_`` returns) and the total norm
    ``left`` after clipping, all in ``norm_type``.
    """
    p = check_norm_type(norm_type)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, g in zip(params, grads, strict=True):
        param.grad = g.clone()
    returned = clip_grad_norm_(params, max_norm, p, eps=eps)
    clipped = [param.grad for param in params]
    return {
        "before": torch.stack(torch._foreach_norm(grads, p)),
        "after": torch.stack(torch._foreach_norm(clipped, p)),
        "returned": returned,
        "left": get_total_norm(clipped, p),
    }


def norm_clipping_panel(
    max_norm: float = 1.0, norm_type: str = "2", eps: str = "PyTorch (1e-6)"
) -> SliderPanel:
    """Per-tensor and total norms before and after clipping one fixed set of gradients."""
    grads = example_gradients()
    figure = new_figure(8.0, 3.2)
    ax = figure.add_subplot()
    count = len(grads)
    x = np.append(np.arange(count), count + 0.8)  # the tensors, a gap, then the total
    width = 0.38
    floor = NORM_AXIS_LIMITS[0]  # bars start at the bottom of the log axis
    before_bars = ax.bar(
        x - width / 2, np.ones(count + 1), width, floor, color=COLORS["original"], label="before"
    )
    after_bars = ax.bar(
        x + width / 2, np.ones(count + 1), width, floor, color=COLORS["norm"], label="after"
    )
    (threshold_line,) = ax.plot(
        [x[-1] - 0.5, x[-1] + 0.5], [0, 0], color=COLORS["threshold"], ls="--", label="max_norm"
    )
    ax.axvline(count + 0.1, color="grey", lw=0.8)
    ax.set_xticks(x, [*PARAMETER_NAMES, "TOTAL"], fontsize=8)
    ax.set(xlim=(-0.6, x[-1] + 0.6), yscale="log", ylim=NORM_AXIS_LIMITS, ylabel="norm (log scale)")
    ax.set_title("clip_grad_norm_ on six tensors: one factor for all", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    figure.tight_layout()
    # Fixed log axis: ticks, labels and legend never change, so render them once.
    freeze_static_artists(figure, [*before_bars, *after_bars, threshold_line])
    readout = widgets.HTML()

    def draw(max_norm: float, norm_type: str, eps: str) -> None:
        report = clip_report(grads, max_norm, NORM_TYPES[norm_type], EPS_CHOICES[eps])
        returned, left = report["returned"].item(), report["left"].item()
        heights = zip(
            [*report["before"].tolist(), returned], [*report["after"].tolist(), left], strict=True
        )
        for before_bar, after_bar, (before, after) in zip(
            before_bars, after_bars, heights, strict=False
        ):
            before_bar.set_height(before - floor)
            after_bar.set_height(after - floor)
        threshold_line.set_ydata([max_norm, max_norm])
        state = "clipped" if returned > max_norm else "not clipped (norm ≤ max_norm)"
        readout.value = (
            f"<b>{state}</b>: every tensor × {left / returned:.6f}<br>"
            f"returned norm (before) = {returned:.6f}<br>"
            f"norm left (after) = {left:.12f}<br>max_norm − left = {max_norm - left:.3e}"
        )

    controls = {
        "max_norm": widgets.FloatSlider(
            value=max_norm, min=0.1, max=10.0, step=0.1, description="max_norm"
        ),
        "norm_type": widgets.ToggleButtons(
            options=list(NORM_TYPES), value=norm_type, description="norm_type"
        ),
        "eps": widgets.ToggleButtons(options=list(EPS_CHOICES), value=eps, description="eps"),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


# ---------------------------------------------------------------- 04: float16 norms

FLOAT16_MAX = float(torch.finfo(torch.float16).max)
MAGNITUDE_EXPONENTS = np.linspace(-6.0, 4.5, 85)
FP16_METHODS = ("float16 squares", "float16 vector_norm", "pre-scaled", "float32 accumulation")


def fp16_norms(magnitudes: Tensor, n: int) -> dict[str, Tensor]:
    r"""The L2 norm of a float16 vector of ``n`` elements equal to each magnitude, four ways.

    Returns float64 rows over ``magnitudes`` (``inf`` where a method overflowed, 0
    where it underflowed) and the exact ``"true"`` norm of the float16 values:

    * float16 squares: :math:`\sqrt{\sum g_i^2}` with every square in float16;
    * float16 vector_norm: ``torch.linalg.vector_norm(g)``, float32 inside, a float16
      result (what ``clip_grad_norm_`` gets per tensor for float16 gradients);
    * pre-scaled: :math:`s\sqrt{\sum (g_i/s)^2}`, :math:`s = \max|g_i|`, result in float32;
    * float32 accumulation: ``torch.linalg.vector_norm(g, dtype=torch.float32)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    g = (magnitudes.to(torch.float64)[:, None] * torch.ones(n, dtype=torch.float64)).half()
    scale = g.abs().amax(dim=1, keepdim=True)
    return {
        "true": torch.linalg.vector_norm(g.double(), dim=1),
        "float16 squares": (g * g).sum(dim=1).sqrt().double(),
        "float16 vector_norm": torch.linalg.vector_norm(g, dim=1).double(),
        "pre-scaled": scale[:, 0].double() * ((g / scale) ** 2).sum(dim=1).double().sqrt(),
        "float32 accumulation": torch.linalg.vector_norm(g, dim=1, dtype=torch.float32).double(),
    }


STATUS_NAMES = ("correct", "overflow (inf)", "underflow (0)", "inaccurate")
STATUS_COLORS = (COLORS["norm"], COLORS["diverged"], "#3b6fb6", COLORS["value"])


def norm_status(computed: Tensor, true: Tensor, rtol: float = 1e-2) -> Tensor:
    """0 correct (within ``rtol``), 1 overflowed to inf, 2 underflowed to 0, 3 otherwise off."""
    status = torch.full(computed.shape, 3, dtype=torch.int64)
    status[torch.isclose(computed, true, rtol=rtol, atol=0.0)] = 0
    status[torch.isinf(computed)] = 1
    status[(computed == 0) & (true > 0)] = 2
    return status


def _format_norm(value: float) -> str:
    if math.isinf(value):
        return "<b>inf (overflow)</b>"
    if value == 0.0:
        return "<b>0 (underflow)</b>"
    return f"{value:.4g}"


def fp16_norm_panel(log10_n: int = 3, log10_magnitude: float = 2.0) -> SliderPanel:
    """Where each way of computing a float16 gradient's norm is right, over element size."""
    magnitudes = torch.tensor(10.0**MAGNITUDE_EXPONENTS)
    tables = {k: fp16_norms(magnitudes, 10**k) for k in range(5)}  # precomputed once
    statuses = {
        k: np.stack([norm_status(rows[name], rows["true"]).numpy() for name in FP16_METHODS])
        for k, rows in tables.items()
    }
    figure = new_figure(8.0, 3.0)
    ax = figure.add_subplot()
    step = MAGNITUDE_EXPONENTS[1] - MAGNITUDE_EXPONENTS[0]
    image = ax.imshow(
        statuses[log10_n],
        cmap=ListedColormap(STATUS_COLORS),
        vmin=-0.5,
        vmax=len(STATUS_NAMES) - 0.5,
        aspect="auto",
        interpolation="nearest",
        extent=(
            MAGNITUDE_EXPONENTS[0] - step / 2,
            MAGNITUDE_EXPONENTS[-1] + step / 2,
            len(FP16_METHODS) - 0.5,
            -0.5,
        ),
    )
    marker = ax.axvline(log10_magnitude, color="black", lw=1.5)
    ax.set_yticks(range(len(FP16_METHODS)), FP16_METHODS)
    ticks = np.arange(-6, 5, 2)
    ax.set_xticks(ticks, [f"1e{t}" for t in ticks])
    ax.set(xlabel="|g_i| (log scale)", title="L2 norm of a float16 gradient")
    ax.legend(
        handles=[Patch(color=c, label=n) for c, n in zip(STATUS_COLORS, STATUS_NAMES, strict=True)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.28),
        ncols=4,
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout()
    # Ticks, labels and legend never change: render them once (about 6x faster updates).
    freeze_static_artists(figure, [image, marker, *ax.spines.values()])
    readout = widgets.HTML()

    def draw(log10_n: int, log10_magnitude: float) -> None:
        rows = tables[log10_n]
        image.set_array(statuses[log10_n])
        index = int(np.abs(MAGNITUDE_EXPONENTS - log10_magnitude).argmin())
        marker.set_xdata([MAGNITUDE_EXPONENTS[index]] * 2)
        lines_html = "".join(
            f"{name}: {_format_norm(rows[name][index].item())}<br>" for name in FP16_METHODS
        )
        readout.value = (
            f"n = {10**log10_n:,} elements, each |g_i| = {magnitudes[index].item():.3g}<br>"
            f"exact norm: {rows['true'][index].item():.4g}<br>{lines_html}"
        )

    controls = {
        "log10_n": widgets.IntSlider(value=log10_n, min=0, max=4, description="log10 n"),
        "log10_magnitude": widgets.FloatSlider(
            value=log10_magnitude, min=-6.0, max=4.5, step=0.125, description="log10 |g_i|"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {
    "norm_clipping": norm_clipping_panel,
    "fp16_norm": fp16_norm_panel,
}
