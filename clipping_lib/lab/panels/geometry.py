r"""Panels and measurements for notebook 01: the geometry of value and norm clipping.

* ``clip_geometry`` (2-D): a gradient :math:`g` of a given angle and length, clipped by
  value (every coordinate into :math:`[-c, c]`, the clip box) and by norm (scaled into
  the ball :math:`\lVert g\rVert \le c`), with the angle each makes with :math:`g`.
* ``steep_wall``: gradient descent on a 1-D loss with a steep wall,
  :math:`L(\theta) = \tfrac12(\theta - 1)^2 + H\,\sigma(-s(\theta - \theta_w))`, with
  and without clipping the gradient to :math:`|g| \le c` (in 1-D value and norm clipping
  are the same operation).

The pure functions (:func:`clip_geometry`, :func:`value_clip_cosines`,
:func:`gaussian_value_clip_cosine`, :func:`steep_wall_loss`, :func:`steep_wall_paths`)
are what the panels draw and what the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Arc, Circle, Rectangle
from torch import Tensor

from clipping_lib._checks import check_threshold
from clipping_lib.clip import clip_by_norm, clip_by_value
from clipping_lib.lab.plots import COLORS, freeze_static_artists, new_figure
from clipping_lib.lab.widgets import SliderPanel

# ------------------------------------------------------------------ 2-D geometry


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """The angle between two non-zero vectors in degrees (NaN if either is zero)."""
    norms = torch.linalg.vector_norm(a.double()) * torch.linalg.vector_norm(b.double())
    if norms == 0:
        return math.nan
    cosine = torch.clamp(torch.dot(a.double().flatten(), b.double().flatten()) / norms, -1, 1)
    return math.degrees(math.acos(cosine.item()))


@dataclass(frozen=True)
class ClipGeometry:
    """A 2-D gradient, its two clipped versions, and the angles they make with it."""

    gradient: Tensor
    value_clipped: Tensor
    norm_clipped: Tensor
    value_angle: float  # degrees between value_clipped and gradient
    norm_angle: float  # degrees between norm_clipped and gradient


def clip_geometry(angle: float, length: float, threshold: float) -> ClipGeometry:
    r"""Clip :math:`g = \ell(\cos\alpha, \sin\alpha)` by value and by norm at ``threshold``.

    ``angle`` :math:`\alpha` is in degrees. Norm clipping is exact (``eps=0``), so its
    result has norm :math:`\min(\ell, c)` and angle 0 with :math:`g`; value clipping
    lands in the box :math:`[-c, c]^2` and turns :math:`g` unless no coordinate is cut,
    both are cut (the diagonals) or one coordinate is zero (the axes).
    """
    length = check_threshold(length, "length")
    threshold = check_threshold(threshold, "threshold")
    radians = math.radians(angle)
    g = torch.tensor([math.cos(radians), math.sin(radians)], dtype=torch.float64) * length
    value_clipped = clip_by_value(g, threshold)
    norm_clipped = clip_by_norm(g, threshold)
    return ClipGeometry(
        gradient=g,
        value_clipped=value_clipped,
        norm_clipped=norm_clipped,
        value_angle=angle_degrees(value_clipped, g),
        norm_angle=angle_degrees(norm_clipped, g),
    )


def _format_angle(degrees: float) -> str:
    return "undefined" if math.isnan(degrees) else f"{degrees:.1f}°"


def geometry_panel(angle: float = 30.0, length: float = 3.0, threshold: float = 1.5) -> SliderPanel:
    """The 2-D panel: original, value-clipped and norm-clipped vectors, box and ball."""
    limit = 5.3
    figure = new_figure(4.8, 4.8)
    ax = figure.add_subplot()
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    ax.set(xlabel="$g_1$", ylabel="$g_2$", title="value vs norm clipping in 2-D")
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    box = Rectangle((0, 0), 0, 0, fill=False, ls="--", lw=1.2, color=COLORS["value"])
    ball = Circle((0, 0), 1.0, fill=False, ls="--", lw=1.2, color=COLORS["norm"])
    ax.add_patch(box)
    ax.add_patch(ball)
    arrow_style = {"length_includes_head": True, "head_width": 0.22, "width": 0.05}
    arrows = {
        name: ax.arrow(0, 0, 1, 0, color=COLORS[name], label=label, **arrow_style)
        for name, label in (
            ("original", "$g$"),
            ("value", "value-clipped (box)"),
            ("norm", "norm-clipped (ball)"),
        )
    }
    turn = Arc((0, 0), 1.6, 1.6, color=COLORS["value"], lw=2.0, label="turn of value clipping")
    ax.add_patch(turn)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    freeze_static_artists(figure, [*arrows.values(), box, ball, turn])
    readout = widgets.HTML()

    def draw(angle: float, length: float, threshold: float) -> None:
        geometry = clip_geometry(angle, length, threshold)
        for name, vector in (
            ("original", geometry.gradient),
            ("value", geometry.value_clipped),
            ("norm", geometry.norm_clipped),
        ):
            arrows[name].set_data(dx=vector[0].item(), dy=vector[1].item())
        box.set_bounds(-threshold, -threshold, 2 * threshold, 2 * threshold)
        ball.set_radius(threshold)
        value_norm = torch.linalg.vector_norm(geometry.value_clipped).item()
        norm_norm = torch.linalg.vector_norm(geometry.norm_clipped).item()
        start = math.degrees(math.atan2(geometry.gradient[1], geometry.gradient[0]))
        end = math.degrees(math.atan2(geometry.value_clipped[1], geometry.value_clipped[0]))
        turn.theta1, turn.theta2 = min(start, end), max(start, end)
        readout.value = (
            f"‖g‖ = {length:.2f}, c = {threshold:.2f}<br>"
            f"value-clipped: ‖·‖ = {value_norm:.3f}, "
            f"angle to g = {_format_angle(geometry.value_angle)}<br>"
            f"norm-clipped: ‖·‖ = {norm_norm:.3f}, "
            f"angle to g = {_format_angle(geometry.norm_angle)}"
        )

    controls = {
        "angle": widgets.FloatSlider(
            value=angle, min=0.0, max=360.0, step=1.0, description="angle (°)"
        ),
        "length": widgets.FloatSlider(
            value=length, min=0.0, max=5.0, step=0.05, description="length ‖g‖"
        ),
        "threshold": widgets.FloatSlider(
            value=threshold, min=0.05, max=3.5, step=0.05, description="threshold c"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


# ------------------------------------------------- the direction change, measured

DISTRIBUTIONS = ("gaussian", "student_t3")


def value_clip_cosines(
    dimension: int,
    thresholds: Tensor | list[float],
    *,
    draws: int = 32,
    distribution: str = "gaussian",
    seed: int = 0,
) -> Tensor:
    r"""Cosine between :math:`\operatorname{clip}_c(g)` and :math:`g`, measured.

    Draws ``draws`` gradients :math:`g \in \mathbb{R}^d` with i.i.d. entries of unit
    variance (``"gaussian"``, or ``"student_t3"``: Student's t with 3 degrees of freedom
    rescaled to unit variance, a heavy-tailed stand-in for real gradients), clips each by
    value at every threshold :math:`c` (in units of the entries' standard deviation) and
    returns the cosines, shape ``(len(thresholds), draws)``. Norm clipping would give
    exactly 1 for every draw.
    """
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"dimension must be an int >= 1, got {dimension!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(draws, dimension, generator=generator, dtype=torch.float64)
    if distribution == "student_t3":
        chi2 = torch.randn(3, draws, dimension, generator=generator, dtype=torch.float64)
        g = g / torch.sqrt((chi2**2).sum(0) / 3) / math.sqrt(3.0)  # t_3 has variance 3
    g_norm = torch.linalg.vector_norm(g, dim=-1)
    cosines = []
    for c in torch.as_tensor(thresholds, dtype=torch.float64).tolist():
        clipped = clip_by_value(g, c)
        cosines.append((clipped * g).sum(-1) / (torch.linalg.vector_norm(clipped, dim=-1) * g_norm))
    return torch.stack(cosines)


def gaussian_value_clip_cosine(threshold: float) -> float:
    r"""The large-dimension limit of :func:`value_clip_cosines` for Gaussian entries.

    With :math:`g_i \sim \mathcal N(0, 1)` i.i.d., the law of large numbers gives
    :math:`\cos \to E[g\,\mathrm{clip}_c(g)] / \sqrt{E[\mathrm{clip}_c(g)^2]}` where
    :math:`E[g\,\mathrm{clip}_c(g)] = 2\Phi(c) - 1` and
    :math:`E[\mathrm{clip}_c(g)^2] = 2\Phi(c) - 1 - 2c\varphi(c) + 2c^2(1 - \Phi(c))`.
    As :math:`c \to 0` (sign descent) it tends to :math:`\sqrt{2/\pi} \approx 0.798`.
    """
    c = check_threshold(threshold, "threshold")
    if c == 0:
        return math.sqrt(2 / math.pi)
    inside = math.erf(c / math.sqrt(2))  # 2 Phi(c) - 1
    density = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    second_moment = inside - 2 * c * density + c * c * (1 - inside)
    return inside / math.sqrt(second_moment)


# ------------------------------------------------------------ 1-D steep wall

WALL_HEIGHT = 4.0
WALL_STEEPNESS = 100.0
WALL_POSITION = 0.5
WALL_START = WALL_POSITION  # the middle of the wall, where the slope is steepest


def _sigmoid_of_minus(x: np.ndarray) -> np.ndarray:
    r""":math:`\sigma(-x) = (1 - \tanh(x/2))/2`, without overflow for large ``|x|``."""
    return 0.5 * (1.0 - np.tanh(0.5 * x))


def steep_wall_loss(theta: np.ndarray | float) -> np.ndarray | float:
    r""":math:`L(\theta) = \tfrac12(\theta - 1)^2 + H\,\sigma(-s(\theta - \theta_w))`.

    A bowl with its minimum near :math:`\theta = 1` and, left of :math:`\theta_w = 0.5`,
    a wall of height :math:`H = 4` whose slope peaks at :math:`H s / 4 = 100`.
    """
    theta = np.asarray(theta, dtype=np.float64)
    wall = WALL_HEIGHT * _sigmoid_of_minus(WALL_STEEPNESS * (theta - WALL_POSITION))
    return 0.5 * (theta - 1) ** 2 + wall


def steep_wall_gradient(theta: np.ndarray | float) -> np.ndarray | float:
    r""":math:`L'(\theta) = (\theta - 1) - H s\,\sigma(u)(1 - \sigma(u))`,
    with :math:`u = -s(\theta - \theta_w)`."""
    theta = np.asarray(theta, dtype=np.float64)
    sigma = _sigmoid_of_minus(WALL_STEEPNESS * (theta - WALL_POSITION))
    return (theta - 1) - WALL_HEIGHT * WALL_STEEPNESS * sigma * (1 - sigma)


def steep_wall_paths(
    learning_rate: float, threshold: float, *, start: float = WALL_START, steps: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradient descent positions :math:`\theta_0..\theta_{\text{steps}}`, plain and clipped.

    The clipped path uses :math:`\theta \leftarrow \theta - \eta\,\mathrm{clip}_c(L'(\theta))`,
    so no step is longer than :math:`\eta c`. Returns ``(plain, clipped)``.
    """
    learning_rate = check_threshold(learning_rate, "learning_rate")
    threshold = check_threshold(threshold, "threshold")
    plain = np.empty(steps + 1)
    clipped = np.empty(steps + 1)
    plain[0] = clipped[0] = start
    for k in range(steps):
        plain[k + 1] = plain[k] - learning_rate * steep_wall_gradient(plain[k])
        step = np.clip(steep_wall_gradient(clipped[k]), -threshold, threshold)
        clipped[k + 1] = clipped[k] - learning_rate * step
    return plain, clipped


def steep_wall_panel(learning_rate: float = 0.1, threshold: float = 1.0) -> SliderPanel:
    """The 1-D panel: gradient descent paths on the steep wall, and loss per step."""
    steps = 25
    figure = new_figure(8.4, 3.4)
    ax_path, ax_loss = figure.subplots(1, 2, width_ratios=(1.4, 1))
    theta = np.linspace(-1.0, 12.0, 1200)
    ax_path.plot(theta, steep_wall_loss(theta), color="0.6", lw=1.2, label="loss $L(θ)$")
    ax_path.set(xlim=(-1, 12), ylim=(-1, 30), xlabel="parameter θ", ylabel="loss")
    ax_path.set_title("gradient descent from the wall", fontsize=10)
    (plain_line,) = ax_path.plot(
        [], [], "o-", ms=3, lw=0.8, color=COLORS["diverged"], label="no clipping"
    )
    (clipped_line,) = ax_path.plot(
        [], [], "o-", ms=3, lw=0.8, color=COLORS["norm"], label="clipped, |g| ≤ c"
    )
    ax_path.legend(loc="upper right", fontsize=8)
    ax_loss.set(xlim=(0, steps), ylim=(1e-4, 1e4), yscale="log", xlabel="step", ylabel="loss")
    ax_loss.set_title("loss per step", fontsize=10)
    (plain_loss,) = ax_loss.plot([], [], color=COLORS["diverged"], label="no clipping")
    (clipped_loss,) = ax_loss.plot([], [], color=COLORS["norm"], label="clipped")
    ax_loss.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    freeze_static_artists(figure, [plain_line, clipped_line, plain_loss, clipped_loss])
    readout = widgets.HTML()
    steps_axis = np.arange(steps + 1)

    def draw(learning_rate: float, threshold: float) -> None:
        plain, clipped = steep_wall_paths(learning_rate, threshold, steps=steps)
        loss_plain, loss_clipped = steep_wall_loss(plain), steep_wall_loss(clipped)
        plain_line.set_data(plain, loss_plain)
        clipped_line.set_data(clipped, loss_clipped)
        plain_loss.set_data(steps_axis, loss_plain)
        clipped_loss.set_data(steps_axis, loss_clipped)
        off = " (off the plot)" if plain[1] > 12 else ""
        readout.value = (
            f"first step: no clipping θ = {plain[0]:.2f} → {plain[1]:.2f}{off}, "
            f"clipped θ → {clipped[1]:.3f}<br>"
            f"loss after {steps} steps: no clipping {loss_plain[-1]:.3g}, "
            f"clipped {loss_clipped[-1]:.3g}"
        )

    controls = {
        "learning_rate": widgets.FloatSlider(
            value=learning_rate, min=0.01, max=0.5, step=0.01, description="learning rate η"
        ),
        "threshold": widgets.FloatSlider(
            value=threshold, min=0.1, max=5.0, step=0.1, description="threshold c"
        ),
    }
    return SliderPanel(figure, controls, draw, readout=readout)


PANELS: dict[str, Callable[[], SliderPanel]] = {
    "clip_geometry": geometry_panel,
    "steep_wall": steep_wall_panel,
}


# ------------------------------------------------------------------ high dimension, plotted

_DISTRIBUTION_TITLES = {
    "gaussian": "Gaussian coordinates",
    "student_t3": "heavy-tailed (Student-t, 3 dof)",
}


def plot_value_clip_cosines(
    cosines: dict[str, Tensor], dimensions: list[int], thresholds: list[float]
) -> None:
    r"""Plot :func:`value_clip_cosines` against the dimension, one panel per distribution.

    ``cosines[distribution]`` has shape ``(dimension, threshold, draw)``. Each threshold
    gets its median (line), its 10–90% band over the draws, and the Gaussian large-:math:`d`
    limit :func:`gaussian_value_clip_cosine` (dashed); norm clipping is the line at 1.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cosines), figsize=(10, 3.8), sharey=True)
    shades = plt.cm.viridis(np.linspace(0.1, 0.85, len(thresholds)))
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for ax, (distribution, cos) in zip(np.atleast_1d(axes), cosines.items(), strict=True):
        for j, (c, shade) in enumerate(zip(thresholds, shades, strict=True)):
            low, mid, high = cos[:, j].double().quantile(levels, dim=1)
            ax.fill_between(dimensions, low, high, color=shade, alpha=0.25)
            ax.plot(dimensions, mid, "o-", ms=3, color=shade, label=f"value, c = {c}σ")
            ax.axhline(gaussian_value_clip_cosine(c), color=shade, ls="--", lw=1)
        ax.axhline(1.0, color=COLORS["norm"], lw=2.5, label="norm clipping (any c)")
        title = _DISTRIBUTION_TITLES.get(distribution, distribution)
        ax.set(xscale="log", xlabel="dimension d", title=title, ylim=(0.6, 1.02))
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("cos ∠(clipped g, g)")
    first.legend(loc="lower right", fontsize=8)
    fig.suptitle("median and 10–90% band over 32 draws; dashed: Gaussian large-d limit")
    fig.tight_layout()
    plt.show()


# ------------------------------------------------------------------ forgetting, two tasks


@dataclass(frozen=True)
class LeastSquaresTasks:
    r"""Two least-squares tasks on the same inputs: :math:`L_j(w) = \tfrac12\,\mathrm{mean}
    (X w - y_j)^2` with targets :math:`y_j = X w_j^\star` of two random linear maps.

    Built by :func:`two_least_squares_tasks`; the tasks are named ``"A"`` and ``"B"``.
    """

    inputs: Tensor  # (samples, features)
    targets: dict[str, Tensor]  # task name -> (samples,)

    def loss(self, w: Tensor, task: str) -> float:
        r""":math:`\tfrac12\,\mathrm{mean}(X w - y)^2` for ``task``."""
        return 0.5 * ((self.inputs @ w - self.targets[task]) ** 2).mean().item()

    def gradient(self, w: Tensor, task: str) -> Tensor:
        r""":math:`X^\top (X w - y) / N`, the gradient of :meth:`loss`."""
        return self.inputs.T @ (self.inputs @ w - self.targets[task]) / len(self.inputs)


def two_least_squares_tasks(
    samples: int = 200, features: int = 10, seed: int = 0
) -> LeastSquaresTasks:
    """Tasks A and B on ``samples`` Gaussian inputs of ``features`` features (float64, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    targets = {
        task: inputs @ torch.randn(features, generator=generator, dtype=torch.float64)
        for task in ("A", "B")
    }
    return LeastSquaresTasks(inputs, targets)
