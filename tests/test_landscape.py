"""The cliff surface: vectorised values and gradients match direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.lab.landscape import (
    descent_path,
    edge_bias,
    final_state,
    loss_and_gradient,
    loss_surface,
    predicted_wall_width,
    slope_and_curvature,
    wall_crossing,
)


def direct_loss(w: float, b: float) -> float:
    """The definition, one point, plain Python: x_t = w sigmoid(x_{t-1}) + b, 50 steps."""
    x = 0.5
    for _ in range(50):
        x = w / (1.0 + math.exp(-x)) + b
    return (1.0 / (1.0 + math.exp(-x)) - 0.7) ** 2


def autograd_gradient(w: float, b: float) -> tuple[float, float]:
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    loss = (torch.sigmoid(final_state(wt, bt)) - 0.7) ** 2
    gw, gb = torch.autograd.grad(loss, [wt, bt])
    return gw.item(), gb.item()


@pytest.fixture(scope="module")
def surface():
    return loss_surface(torch.linspace(1, 9, 41), torch.linspace(-7, 1, 33))


def test_surface_matches_a_direct_scalar_loop_at_every_grid_point(surface):
    assert surface.loss.shape == (33, 41)
    for row in range(0, 33, 4):
        for column in range(0, 41, 5):
            w, b = surface.w_values[column].item(), surface.b_values[row].item()
            assert surface.loss[row, column].item() == pytest.approx(direct_loss(w, b), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(w=st.floats(-4, 12), b=st.floats(-8, 4))
def test_forward_mode_gradient_matches_autograd(w, b):
    loss, gw, gb = loss_and_gradient(w, b)
    ref_w, ref_b = autograd_gradient(w, b)
    assert loss == pytest.approx(direct_loss(w, b), rel=1e-9, abs=1e-15)
    assert gw == pytest.approx(ref_w, rel=1e-6, abs=1e-12)
    assert gb == pytest.approx(ref_b, rel=1e-6, abs=1e-12)


def test_float_and_tensor_versions_agree(surface):
    row, column = 20, 17
    w, b = surface.w_values[column].item(), surface.b_values[row].item()
    loss, gw, gb = loss_and_gradient(w, b)
    assert surface.loss[row, column].item() == pytest.approx(loss, rel=1e-12)
    assert surface.grad_w[row, column].item() == pytest.approx(gw, rel=1e-9, abs=1e-15)
    assert surface.grad_b[row, column].item() == pytest.approx(gb, rel=1e-9, abs=1e-15)


def test_the_surface_has_a_cliff_only_where_w_exceeds_4():
    surface = loss_surface(torch.linspace(1, 9, 240), torch.linspace(-7, 1, 240))
    norms = surface.grad_norm
    assert norms.max() > 1000 * norms.median()
    # The steepest point lies where the map has two stable fixed points (w > 4).
    steepest_column = norms.max(dim=0).values.argmax()
    assert surface.w_values[steepest_column] > 4
    assert norms[:, surface.w_values < 3.5].max() < norms.max() / 10
    # The two plateaus: sigma(x_50) ~ 0 (loss 0.49) below the edge, ~ 1 (0.09) above.
    assert surface.loss[0, -1].item() == pytest.approx(0.49, abs=3e-3)
    assert surface.loss[-1, -1].item() == pytest.approx(0.09, abs=3e-3)


def test_slope_and_curvature_explode_together_at_the_edge():
    b = torch.linspace(-3.5, -2.0, 30001, dtype=torch.float64)
    slope, curvature = slope_and_curvature(5.0, b)
    edge = slope.abs().argmax()
    assert slope[edge].abs() > 1000 and curvature[edge].abs() > 1e6
    assert (slope.abs() / curvature.abs())[edge] < 1e-3 < (slope.abs() / curvature.abs()).median()
    # finite differences of the loss agree with the slope away from the edge
    h = 1e-6
    for value in (-3.2, -2.3):
        plus = direct_loss(5.0, value + h)
        minus = direct_loss(5.0, value - h)
        index = (b - value).abs().argmin()
        assert slope[index].item() == pytest.approx((plus - minus) / (2 * h), rel=1e-4)


def test_clipped_paths_never_step_further_than_lr_times_threshold():
    for lr, c in [(1.0, 0.5), (3.0, 0.2), (0.5, 2.0)]:
        norm = descent_path(6.0, -4.5, lr=lr, steps=100, method="norm", threshold=c)
        value = descent_path(6.0, -4.5, lr=lr, steps=100, method="value", threshold=c)
        assert np.all(norm.step_length <= lr * c * (1 + 1e-12))
        assert np.all(value.step_length <= math.sqrt(2) * lr * c * (1 + 1e-12))


def test_the_unclipped_path_is_thrown_by_the_cliff_and_the_clipped_one_is_not():
    unclipped = descent_path(6.0, -4.5, lr=1.0, steps=100)
    clipped = descent_path(6.0, -4.5, lr=1.0, steps=100, method="norm", threshold=0.5)
    assert unclipped.largest_step > 1000 * clipped.largest_step
    assert unclipped.loss[-1] == pytest.approx(0.09, abs=1e-6) and clipped.loss[-1] < 0.05
    np.testing.assert_array_equal(unclipped.points[:60], clipped.points[:60])  # same until then


def test_path_records_each_step():
    path = descent_path(2.0, -1.0, lr=0.5, steps=5)
    assert path.points.shape == (6, 2) and path.loss.shape == (6,) and path.grad_norm.shape == (5,)
    loss, gw, gb = loss_and_gradient(2.0, -1.0)
    np.testing.assert_allclose(path.points[1], [2.0 - 0.5 * gw, -1.0 - 0.5 * gb])
    assert path.grad_norm[0] == pytest.approx(math.hypot(gw, gb))
    assert path.loss[0] == pytest.approx(loss)


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="method"):
        descent_path(1.0, 0.0, lr=1.0, steps=3, method="adaptive")
    with pytest.raises(ValueError, match="threshold"):
        descent_path(1.0, 0.0, lr=1.0, steps=3, method="norm")
    with pytest.raises(ValueError, match="lr"):
        descent_path(1.0, 0.0, lr=0.0, steps=3)
    with pytest.raises(TypeError, match="steps"):
        descent_path(1.0, 0.0, lr=1.0, steps=2.5)
    with pytest.raises(ValueError, match="w_values"):
        loss_surface(torch.tensor([1.0]), torch.linspace(0, 1, 3))


def test_unstable_fixed_point_slope_and_edge():
    from clipping_lib.lab.landscape import edge_bias, final_state, fixed_point_slope

    assert math.isclose(fixed_point_slope(1.0), 0.2350037122015945, rel_tol=1e-12)
    w = torch.tensor(5.0, dtype=torch.float64)
    b = torch.tensor(edge_bias(5.0), dtype=torch.float64)
    assert abs(final_state(w, b, steps=1).item() - 0.5) < 1e-12  # x0 = 0.5 is a fixed point


@pytest.mark.parametrize("w", [5.0, 6.0, 7.0])
def test_wall_width_is_lambda_to_the_minus_50(w):
    from clipping_lib.lab.landscape import edge_bias, predicted_wall_width

    width = predicted_wall_width(w)
    b = edge_bias(w) + width * torch.linspace(-300, 300, 6001, dtype=torch.float64)
    slope, _ = slope_and_curvature(w, b)
    jump = abs(loss_and_gradient(w, b[0].item())[0] - loss_and_gradient(w, b[-1].item())[0])
    measured = jump / slope.abs().max().item()
    assert width / 3 < measured < 3 * width
    with pytest.raises(ValueError, match="stable"):
        predicted_wall_width(3.0)


def test_hessian_norms_match_forward_mode_gradient_and_autograd():
    from clipping_lib.lab.landscape import gradient_and_hessian_norms

    w = torch.linspace(2, 8, 7, dtype=torch.float64)[None, :]
    b = torch.linspace(-6, 0, 5, dtype=torch.float64)[:, None]
    g, h = gradient_and_hessian_norms(w, b)
    torch.testing.assert_close(g, loss_surface(w[0], b[:, 0]).grad_norm, rtol=1e-10, atol=1e-14)
    point = torch.tensor([w[0, 3].item(), b[2, 0].item()], dtype=torch.float64)

    def loss(p):
        return (torch.sigmoid(final_state(p[0], p[1])) - 0.7) ** 2

    hessian = torch.autograd.functional.hessian(loss, point)
    expected = torch.linalg.eigvalsh(hessian).abs().max()
    torch.testing.assert_close(h[2, 3], expected, rtol=1e-9, atol=1e-14)


def test_wall_crossing_resolves_the_wall_on_both_sides():
    b, grad_norm, hessian_norm = wall_crossing(5.0, points=50)
    assert b.shape == grad_norm.shape == hessian_norm.shape == (100,)
    offsets = b - edge_bias(5.0)
    assert (offsets[:50] < 0).all() and (offsets[50:] > 0).all()
    width = predicted_wall_width(5.0)
    assert math.isclose(offsets[50].item(), 1e-3 * width, rel_tol=1e-6)
    assert grad_norm.max() > 1000 * grad_norm.min()  # the wall and the plateaus beside it
    with pytest.raises(ValueError, match="decades"):
        wall_crossing(5.0, decades=(2.0, -3.0))
