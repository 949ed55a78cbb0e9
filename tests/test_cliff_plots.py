"""clipping_lib.lab.cliff_plots: every figure of notebook 06 draws on the axes it is given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from clipping_lib.lab import cliff_plots
from clipping_lib.lab.landscape import descent_path, loss_surface, wall_crossing
from clipping_lib.lab.smoothness import fit_l0_l1, smoothness_along_training


@pytest.fixture(scope="module")
def surface():
    return loss_surface(torch.linspace(1, 9, 30, dtype=torch.float64),
                        torch.linspace(-7, 1, 30, dtype=torch.float64))


@pytest.fixture(scope="module")
def runs():
    return {method: descent_path(6.0, -4.5, lr=1.0, steps=80, method=method, threshold=0.5)
            for method in ("none", "norm", "value")}


def _two_axes():
    figure, axes = plt.subplots(1, 2)
    return figure, axes


def test_the_cliff_figures_draw(surface, runs):
    _, (left, right) = _two_axes()
    cliff_plots.plot_surface(left, right, surface)
    assert len(left.images) == 1 and len(right.images) == 1
    _, (left, right) = _two_axes()
    cliff_plots.plot_paths(left, right, surface, runs, start=(6.0, -4.5), lr=1.0, threshold=0.5)
    assert len(right.get_lines()) == 4  # three step-length curves and lr x c
    assert "thrown to" in left.texts[0].get_text()
    figure = plt.figure()
    cliff_plots.plot_cliff_3d(figure, surface, runs, threshold=0.5)
    assert len(figure.axes[0].get_lines()) == 3
    plt.close("all")


def test_the_theory_figures_draw():
    _, (left, right) = _two_axes()
    paths = {"plain": np.array([3.0, -7.8, np.inf]), "clipped": np.array([3.0, 2.9, 2.8])}
    outcome = {"plain": [0.1, float("inf")], "clipped": [0.01, 0.02]}
    cliff_plots.plot_quartic(left, right, paths, np.array([1.0, 3.0]), outcome, lr=0.1,
                             threshold=1.0)
    assert right.get_lines()[-1].get_xdata()[0] == pytest.approx(5**0.5)  # 1/sqrt(2 lr)
    _, (left, right) = _two_axes()
    trained = smoothness_along_training([0, 1], steps=10, length=6, examples=8)
    cliff_plots.plot_training_smoothness(left, right, trained, baseline=0.15)
    assert len(left.collections) == 2 and len(right.get_lines()) == 3
    _, ax = plt.subplots()
    _, g, h = wall_crossing(5.0, points=20)
    cliff_plots.plot_cliff_smoothness(ax, {5.0: (g, h)}, {5.0: fit_l0_l1(g, h)}, {5.0: 5e-5},
                                      (g[:5], h[:5]))
    assert len(ax.collections) == 2
    _, ax = plt.subplots()
    b = torch.linspace(-3, -2, 5, dtype=torch.float64)
    cliff_plots.plot_slope_and_curvature(ax, b, b.exp(), b.exp() ** 2, 5.0)
    cliff_plots.plot_two_trajectories(ax, torch.zeros(4, 2), torch.tensor([0.1, 0.2]), 5.0)
    c = torch.tensor([0.5, 1.0], dtype=torch.float64)
    zero = {"exponential": c * 0, "gaussian": c * 0}
    _, ax = plt.subplots()
    cliff_plots.plot_bias(ax, c, zero, zero)
    assert len(ax.get_lines()) == 5
    plt.close("all")
