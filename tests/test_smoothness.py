"""clipping_lib.lab.smoothness: the (L0, L1) fit, smoothness along a run, 06's x^4 claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.lab.smoothness import (
    QUARTIC_L0_L1,
    descent_1d,
    fit_l0_l1,
    quartic,
    smoothness_along_training,
    trajectory_smoothness,
)


def quartic_gradient(x: float) -> float:
    return quartic(x)[1]


@settings(deadline=None, max_examples=30)
@given(st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_fit_recovers_an_exact_line(L0, L1):
    g = torch.logspace(-3, 3, 200, dtype=torch.float64)
    fit = fit_l0_l1(g, L0 + L1 * g)
    assert math.isclose(fit.L0, L0, rel_tol=0.02) and math.isclose(fit.L1, L1, rel_tol=0.02)
    assert fit.rms_log10_error < 0.01


def test_fit_limits_constant_and_proportional():
    g = torch.logspace(-2, 2, 50, dtype=torch.float64)
    assert fit_l0_l1(g, torch.full_like(g, 3.0)).L1 == 0.0
    assert fit_l0_l1(g, 5.0 * g).L0 == 0.0


def test_fit_ignores_nan_and_rejects_bad_input():
    g = torch.tensor([1.0, 2.0, math.nan, 4.0], dtype=torch.float64)
    assert math.isfinite(fit_l0_l1(g, 1 + g).L1)
    with pytest.raises(ValueError, match="same length"):
        fit_l0_l1(g, g[:2])
    with pytest.raises(ValueError, match="at least 2"):
        fit_l0_l1(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 1.0]))
    with pytest.raises(TypeError):
        fit_l0_l1([1.0], [1.0])


def test_trajectory_smoothness_of_a_quadratic_is_its_curvature():
    A = torch.diag(torch.tensor([1.0, 3.0, 7.0], dtype=torch.float64))
    params = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = params @ A
    norms, smoothness = trajectory_smoothness(params, grads)
    assert torch.allclose(norms, grads[:-1].norm(dim=1))
    assert torch.all(smoothness <= 7.0 + 1e-12) and torch.all(smoothness >= 1.0 - 1e-12)
    frozen = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.isnan(trajectory_smoothness(frozen, frozen)[1]).all()
    with pytest.raises(ValueError, match="differ"):
        trajectory_smoothness(params, grads[:, :2])


def test_quartic_is_16_1_smooth_and_not_L_smooth():
    x = np.linspace(-100, 100, 200001)
    L0, L1 = QUARTIC_L0_L1
    assert np.all(12 * x**2 <= L0 + L1 * np.abs(4 * x**3) + 1e-9)
    assert quartic(2.0) == (16.0, 32.0, 48.0)  # equality of the bound at |x| = 2: 48 = 16 + 32
    assert quartic(1e200)[1] == math.inf  # overflows to inf, does not raise


@pytest.mark.parametrize("x0", [2.5, 3.0, 10.0, 100.0])
def test_clipped_gd_converges_where_gd_at_the_same_step_diverges(x0):
    plain = descent_1d(quartic_gradient, x0, lr=0.1, steps=3000)
    clipped = descent_1d(quartic_gradient, x0, lr=0.1, steps=3000, threshold=1.0)
    assert not math.isfinite(plain[-1])
    assert len(clipped) == 3001 and abs(clipped[-1]) < 0.05
    assert np.all(np.abs(np.diff(clipped)) <= 0.1 + 1e-12)  # no step longer than lr * c


def test_gd_converges_below_sqrt5_at_lr_01():
    assert abs(descent_1d(quartic_gradient, 2.2, lr=0.1, steps=3000)[-1]) < 0.05


def test_descent_1d_rejects_bad_input():
    with pytest.raises(ValueError, match="lr"):
        descent_1d(quartic_gradient, 1.0, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="x0"):
        descent_1d(quartic_gradient, math.nan, lr=0.1, steps=3)
    with pytest.raises(ValueError, match="threshold"):
        descent_1d(quartic_gradient, 1.0, lr=0.1, steps=3, threshold=-1.0)
    with pytest.raises(TypeError):
        descent_1d(3.0, 1.0, lr=0.1, steps=3)


def test_training_runs_one_model_per_seed_and_report_the_slope():
    runs = smoothness_along_training([0, 1], steps=20, length=8, examples=16)
    assert [run.seed for run in runs] == [0, 1]
    for run in runs:
        assert run.grad_norm.shape == run.smoothness.shape == (20,)
        assert len(run.loss) == 21 and run.loss[-1] < run.loss[0]
        logs = torch.stack([run.grad_norm.log10(), run.smoothness.log10()])
        centred = logs - logs.mean(dim=1, keepdim=True)
        slope = (centred[0] @ centred[1]) / (centred[0] @ centred[0])
        assert math.isclose(run.slope, slope.item(), rel_tol=1e-12)
        assert -1 <= run.correlation <= 1 and run.fit.rms_log10_error <= run.constant_error + 1e-12


def test_training_runs_together_equal_runs_alone():
    together = smoothness_along_training([0, 3], steps=5, length=8, examples=16)
    alone = smoothness_along_training([3], steps=5, length=8, examples=16)[0]
    torch.testing.assert_close(together[1].grad_norm, alone.grad_norm, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seeds": []}, "seeds must name"), ({"seeds": [-1]}, "seeds"), ({"lr": 0.0}, "lr"),
     ({"steps": 1}, "steps")],
)
def test_training_runs_refuse_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smoothness_along_training(**kwargs)
