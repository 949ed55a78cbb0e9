"""Notebook 02's slider panel and the pure function behind it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab.models import RNN
from clipping_lib.lab.panels import spectral
from clipping_lib.lab.spectral import STRUCTURES, bptt_gradient_norms, recurrent_matrix


@pytest.mark.parametrize("structure", ["orthogonal", "symmetric"])
def test_profile_of_a_normal_linear_rnn_is_rho_to_the_k(structure):
    profile = spectral.gradient_profile(1.2, 40, 16, "linear", structure)
    assert profile.norms.shape == (41,)
    assert np.abs(profile.eigenvalues).max() == pytest.approx(1.2, rel=1e-12)
    assert profile.sigma_max == pytest.approx(1.2, rel=1e-12)
    if structure == "orthogonal":  # ||W^k v|| = rho^k for every unit v
        np.testing.assert_allclose(profile.norms, 1.2 ** np.arange(41), rtol=1e-9)
        assert profile.growth_rate == pytest.approx(math.log(1.2), rel=1e-9)
    else:  # v needs a few steps to line up with the top eigenvector
        assert profile.growth_rate == pytest.approx(math.log(1.2), rel=0.02)
        assert np.all(profile.norms <= 1.2 ** np.arange(41) * (1 + 1e-9))


@pytest.mark.parametrize(
    ("nonlinearity", "structure", "input_scale"),
    [("linear", "gaussian", 1.0), ("tanh", "gaussian", 0.5), ("tanh", "symmetric", 2.0)],
)
def test_profile_equals_the_autograd_measurement_of_the_same_rnn(
    nonlinearity, structure, input_scale
):
    rho, steps, n, seed = 1.3, 50, 12, 3
    profile = spectral.gradient_profile(rho, steps, n, nonlinearity, structure, input_scale, seed)
    W = rho * recurrent_matrix(n, 1.0, structure, dtype=torch.float64)
    model = RNN(
        1,
        n,
        nonlinearity=nonlinearity,
        bias=False,
        recurrent_matrix=W,
        seed=seed,
        dtype=torch.float64,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, spectral.BURN_IN + steps, 1, generator=generator, dtype=torch.float64)
    x = x * input_scale
    h0 = torch.randn(1, n, generator=generator, dtype=torch.float64) * 0.1
    if nonlinearity == "tanh":
        with torch.no_grad():
            h0 = model.unroll(x[:, : spectral.BURN_IN], h0)[-1]
    expected = bptt_gradient_norms(model, x[:, spectral.BURN_IN :], h0)[0]
    np.testing.assert_allclose(profile.norms, expected.numpy(), rtol=1e-9)


def test_profile_tanh_saturates_and_extremes_do_not_raise():
    tanh = spectral.gradient_profile(1.5, 100, 64, "tanh", "gaussian", input_scale=1.0)
    assert tanh.growth_rate < 0 < math.log(1.5)
    extreme = spectral.gradient_profile(0.5, 200, 128, "tanh", "symmetric", input_scale=3.0)
    assert extreme.norms.shape == (201,)
    for rho, steps, size in [(1.5, 200, 2), (0.5, 10, 128), (1.0, 10, 2)]:
        for structure in STRUCTURES:
            profile = spectral.gradient_profile(rho, steps, size, "linear", structure)
            assert np.all(np.isnan(profile.norms) | (profile.norms > 0))


def test_profile_rejects_a_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        spectral.gradient_profile(1.0, 10, 4, "relu")


def test_panel_redraws_for_every_control():
    panel = spectral.PANELS["spectral_radius"]()
    ax_norm, ax_eig = panel.figure.axes[:2]
    for name, value in [
        ("rho", 0.8),
        ("steps", 60),
        ("hidden_size", 10),
        ("nonlinearity", "tanh"),
        ("structure", "symmetric"),
        ("input_scale", 2.5),
    ]:
        before = panel.image.value
        panel.controls[name].value = value
        assert panel.image.value != before, name
    expected = spectral.gradient_profile(0.8, 60, 10, "tanh", "symmetric", 2.5)
    measured = ax_norm.lines[1]
    np.testing.assert_allclose(measured.get_ydata(), expected.norms)
    assert len(measured.get_xdata()) == 61
    assert len(ax_eig.collections[0].get_offsets()) == 10
    radius = next(p for p in ax_eig.patches if p.get_linestyle() == "--")
    assert radius.get_radius() == pytest.approx(0.8)
    assert "ρ(W) = 0.800" in panel.readout.value


def test_panel_readout_reports_the_fitted_rate():
    panel = spectral.spectral_panel(rho=1.2, structure="orthogonal")
    assert "+0.1823 per step" in panel.readout.value
    assert f"log ρ = {math.log(1.2):+.4f}" in panel.readout.value


def test_plot_weight_gradient_draws_terms_and_bounds(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    lengths = [5, 10]
    spectral.plot_weight_gradient(
        torch.ones(11), torch.ones(11), lengths, [1.0, 2.0], {5: [1.0, 1.0]}, {5: 3.0}
    )
    (figure,) = shown
    left, right = figure.axes
    assert len(left.lines) == 2
    assert any(list(line.get_ydata()) == [3.0, 3.0] for line in right.lines)  # the bound
    plt.close(figure)
