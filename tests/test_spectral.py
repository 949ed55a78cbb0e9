"""clipping_lib.lab.spectral against direct computations, and the claims notebook 02 makes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipping_lib.lab.models import RNN
from clipping_lib.lab.spectral import (
    STRUCTURES,
    bptt_gradient_norms,
    fitted_growth_rate,
    gated_gradient_norms,
    jacobian_product_norms,
    largest_singular_value,
    power_norms,
    recurrent_matrix,
    spectral_radius,
    truncated_weight_gradient,
    weight_gradient_terms,
)
from clipping_lib.lab.threads import single_thread


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 24),
    rho=st.floats(0.0, 3.0),
    structure=st.sampled_from(STRUCTURES),
    seed=st.integers(0, 1000),
)
def test_recurrent_matrix_has_exactly_the_spectral_radius(size, rho, structure, seed):
    W = recurrent_matrix(size, rho, structure, seed=seed, dtype=torch.float64)
    assert W.shape == (size, size)
    eigenvalues = np.linalg.eigvals(W.numpy())
    assert abs(np.abs(eigenvalues).max() - rho) <= 1e-9 * max(rho, 1.0)


def test_structures():
    orthogonal = recurrent_matrix(16, 0.7, "orthogonal", dtype=torch.float64)
    torch.testing.assert_close(orthogonal.T @ orthogonal, 0.49 * torch.eye(16, dtype=torch.float64))
    symmetric = recurrent_matrix(16, 0.7, "symmetric", dtype=torch.float64)
    assert torch.equal(symmetric, symmetric.T)
    for W in (orthogonal, symmetric):  # normal matrices: sigma_max = rho
        assert abs(largest_singular_value(W).item() - 0.7) < 1e-12
    gaussian = recurrent_matrix(64, 0.7, "gaussian")
    assert largest_singular_value(gaussian).item() > 1.5 * 0.7  # non-normal: ~2 rho
    assert recurrent_matrix(8, 1.0, seed=5).equal(recurrent_matrix(8, 1.0, seed=5))
    assert recurrent_matrix(8, 1.0).dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((4, -0.1), ValueError, "rho"),
        ((4, math.nan), ValueError, "rho"),
        ((4, math.inf), ValueError, "rho"),
        ((4, True), TypeError, "rho"),
        ((4, "1"), TypeError, "rho"),
        ((0, 1.0), ValueError, "size"),
        ((2.0, 1.0), TypeError, "size"),
        ((4, 1.0, "diagonal"), ValueError, "structure"),
    ],
)
def test_recurrent_matrix_rejects_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        recurrent_matrix(*args)


def test_radius_and_singular_value_match_numpy_batched():
    W = torch.randn(3, 5, 5, dtype=torch.float64)
    expected_rho = [np.abs(np.linalg.eigvals(w)).max() for w in W.numpy()]
    expected_sigma = [np.linalg.norm(w, 2) for w in W.numpy()]
    np.testing.assert_allclose(spectral_radius(W).numpy(), expected_rho, rtol=1e-12)
    np.testing.assert_allclose(largest_singular_value(W).numpy(), expected_sigma, rtol=1e-12)
    with pytest.raises(ValueError, match="square"):
        spectral_radius(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="W must be a Tensor"):
        largest_singular_value([[1.0]])


def test_power_norms_match_matrix_power_and_batch():
    W = torch.randn(2, 6, 6, dtype=torch.float64) / 2
    norms = power_norms(W, 12)
    assert norms.shape == (2, 13)
    for batch in range(2):
        for k in range(13):
            expected = torch.linalg.matrix_norm(torch.linalg.matrix_power(W[batch], k), ord=2)
            torch.testing.assert_close(norms[batch, k], expected)
    assert power_norms(W[0], 0).tolist() == [1.0]


def test_jacobian_product_norms_match_direct_products():
    jacobians = torch.randn(5, 4, 4, dtype=torch.float64)
    norms = jacobian_product_norms(jacobians)
    assert norms[0] == 1.0
    for k in range(1, 6):
        product = torch.eye(4, dtype=torch.float64)
        for t in range(5, 5 - k, -1):  # J_T ... J_{T-k+1}; J_t is entry t - 1
            product = product @ jacobians[t - 1]
        torch.testing.assert_close(norms[k], torch.linalg.matrix_norm(product, ord=2))
    with pytest.raises(ValueError, match="jacobians"):
        jacobian_product_norms(torch.eye(3))


def test_bptt_gradient_norms_linear_is_w_transpose_power():
    W = recurrent_matrix(6, 1.1, dtype=torch.float64)
    model = RNN(2, 6, nonlinearity="linear", recurrent_matrix=W, dtype=torch.float64)
    x = torch.randn(3, 10, 2, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    v = v / v.norm()
    norms = bptt_gradient_norms(model, x, direction=v)
    assert norms.shape == (3, 11)
    expected = [(torch.linalg.matrix_power(W.T, k) @ v).norm() for k in range(11)]
    for row in norms:  # a linear RNN's gradient does not depend on the inputs
        torch.testing.assert_close(row, torch.stack(expected))


def test_bptt_gradient_norms_tanh_match_state_jacobians():
    model = RNN(1, 5, nonlinearity="tanh", seed=3, dtype=torch.float64)
    x = torch.randn(1, 8, 1, dtype=torch.float64)
    h0 = torch.randn(1, 5, dtype=torch.float64)
    norms = bptt_gradient_norms(model, x, h0)[0]
    jacobians = model.state_jacobians(model.unroll(x, h0))[0]
    g = torch.full((5,), 1 / math.sqrt(5), dtype=torch.float64)
    expected = [g.norm()]
    for t in range(8, 0, -1):  # dL/dh_{t-1} = J_t^T dL/dh_t
        g = jacobians[t - 1].T @ g
        expected.append(g.norm())
    torch.testing.assert_close(norms, torch.stack(expected))


def test_bptt_gradient_norms_rejects_bad_arguments():
    model = RNN(1, 3)
    with pytest.raises(TypeError, match="model"):
        bptt_gradient_norms(torch.nn.RNN(1, 3), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="direction"):
        bptt_gradient_norms(model, torch.zeros(1, 2, 1), direction=torch.ones(4))


@given(rate=st.floats(-1.0, 1.0), scale=st.floats(1e-3, 1e3))
def test_fitted_growth_rate_recovers_a_geometric_rate(rate, scale):
    norms = scale * torch.exp(rate * torch.arange(30, dtype=torch.float64))
    assert abs(fitted_growth_rate(norms) - rate) < 1e-9
    assert abs(fitted_growth_rate(norms, 10, 20) - rate) < 1e-9


def test_fitted_growth_rate_rejects_logs_it_cannot_take():
    with pytest.raises(ValueError, match="> 0"):
        fitted_growth_rate(torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="fewer than 2"):
        fitted_growth_rate(torch.tensor([1.0, 2.0]), start=1)
    with pytest.raises(ValueError, match="1-d"):
        fitted_growth_rate(torch.ones(2, 2))


@pytest.mark.parametrize("rho", [0.8, 0.9, 1.1, 1.2])
def test_notebook_claim_linear_growth_rate_is_log_rho(rho):
    # Notebook 02: Gaussian W, n = 32, T = 100, fit over k in [50, 100], within 5%.
    model = RNN(1, 32, nonlinearity="linear", recurrent_matrix=recurrent_matrix(32, rho))
    norms = bptt_gradient_norms(model, torch.randn(1, 100, 1))[0]
    rate = fitted_growth_rate(norms, start=50)
    assert abs(rate - math.log(rho)) < 0.05 * abs(math.log(rho))


def test_notebook_claim_tanh_saturation_defeats_rho_above_one():
    W = recurrent_matrix(64, 1.5, dtype=torch.float64)
    model = RNN(1, 64, nonlinearity="tanh", bias=False, recurrent_matrix=W, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 200, 1, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        settled = model.unroll(x[:, :100], 0.1 * torch.randn(4, 64, dtype=torch.float64))[-1]
    norms = bptt_gradient_norms(model, x[:, 100:], settled).median(dim=0).values
    assert fitted_growth_rate(norms, start=50) < -0.05  # vanishes although rho = 1.5


def test_gated_gradient_norms():
    state = torch.random.get_rng_state()
    default = gated_gradient_norms("lstm", 16, 60, batch=3, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert default.shape == (3, 61)
    assert torch.equal(default, gated_gradient_norms("lstm", 16, 60, batch=3, seed=4))
    kept = gated_gradient_norms("lstm", 16, 60, batch=3, seed=4, gate_bias=3.0)
    assert (kept[:, 50] > 100 * default[:, 50]).all()  # the forget-gate bias keeps the gradient
    gru = gated_gradient_norms("gru", 16, 60, seed=4)
    gru_kept = gated_gradient_norms("gru", 16, 60, seed=4, gate_bias=3.0)
    assert gru_kept[0, 50] > 100 * gru[0, 50]
    assert gated_gradient_norms("gru", 4, 0).shape == (1, 1)
    with pytest.raises(ValueError, match="cell"):
        gated_gradient_norms("rnn", 4, 5)
    with pytest.raises(ValueError, match="steps"):
        gated_gradient_norms("gru", 4, -1)


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), single_thread():
        raise RuntimeError
    assert torch.get_num_threads() == before


def _chaotic_tanh(n: int = 16, rho: float = 3.0):
    W = recurrent_matrix(n, rho, "gaussian", dtype=torch.float64)
    model = RNN(1, n, nonlinearity="tanh", bias=False, recurrent_matrix=W, dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    x = 0.5 * torch.randn(3, 25, 1, generator=generator, dtype=torch.float64)
    h0 = 0.5 * torch.randn(3, n, generator=generator, dtype=torch.float64)
    return model, x, h0


@pytest.mark.parametrize("nonlinearity", ["tanh", "linear"])
def test_weight_gradient_terms_sum_to_autograd(nonlinearity):
    model, x, h0 = _chaotic_tanh(rho=3.0 if nonlinearity == "tanh" else 0.9)
    model.nonlinearity = nonlinearity
    terms = weight_gradient_terms(model, x, h0)
    assert terms.shape == (25, 16, 16)
    direction = torch.full((16,), 0.25, dtype=torch.float64)
    model.zero_grad()
    (model.unroll(x, h0)[-1] @ direction).sum().backward()
    torch.testing.assert_close(
        terms.sum(dim=0), model.W.grad, rtol=1e-8, atol=1e-10 * model.W.grad.abs().max().item()
    )


@pytest.mark.parametrize("k", [1, 5, 25])
def test_truncated_bptt_equals_autograd_with_detach(k):
    model, x, h0 = _chaotic_tanh()
    with torch.no_grad():
        cut = model.unroll(x[:, : 25 - k], h0)[-1]
    model.zero_grad()
    direction = torch.full((16,), 0.25, dtype=torch.float64)
    (model.unroll(x[:, 25 - k :], cut.detach())[-1] @ direction).sum().backward()
    torch.testing.assert_close(
        truncated_weight_gradient(model, x, k, h0),
        model.W.grad,
        rtol=1e-8,
        atol=1e-10 * model.W.grad.abs().max().item(),
    )
    # ... and obeys its T-free bound: batch * sqrt(n) * sum_{j<k} sigma_max^j.
    sigma = largest_singular_value(model.W).item()
    bound = 3 * 4.0 * sum(sigma**j for j in range(k))
    assert torch.linalg.matrix_norm(truncated_weight_gradient(model, x, k, h0)) <= bound


def test_weight_gradient_bad_input():
    model, x, h0 = _chaotic_tanh()
    with pytest.raises(TypeError):
        weight_gradient_terms(torch.nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match="direction"):
        weight_gradient_terms(model, x, h0, direction=torch.ones(3))
    with pytest.raises(ValueError, match="k"):
        truncated_weight_gradient(model, x, 0, h0)


def test_settled_tanh_rnn_is_seeded_and_bounded():
    from clipping_lib.lab.spectral import settled_tanh_rnn

    model, x, h0 = settled_tanh_rnn(3.0, hidden_size=16, batch=2, steps=10)
    assert x.shape == (2, 10, 1) and h0.shape == (2, 16) and x.dtype == torch.float64
    assert spectral_radius(model.W).item() == pytest.approx(3.0)
    assert h0.abs().max() < 1
    again = settled_tanh_rnn(3.0, hidden_size=16, batch=2, steps=10)
    assert torch.equal(again[1], x) and torch.equal(again[2], h0)
    with pytest.raises(ValueError, match="rho"):
        settled_tanh_rnn(-1.0)
