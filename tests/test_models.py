"""clipping_lib.lab.models.RNN against a hand-written loop, torch.nn.RNN and autograd Jacobians."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.models import RNN


def reference_states(model: RNN, x: torch.Tensor, h0: torch.Tensor) -> list[torch.Tensor]:
    """h_t = phi(W h_{t-1} + U x_t + b), one sample and one step at a time."""
    W, U = model.W.detach(), model.U.detach()
    b = model.b.detach() if model.b is not None else torch.zeros(model.hidden_size)
    phi = torch.tanh if model.nonlinearity == "tanh" else (lambda a: a)
    out = []
    for sample in range(x.shape[0]):
        h = h0[sample]
        states = [h]
        for t in range(x.shape[1]):
            h = phi(W @ h + U @ x[sample, t] + b)
            states.append(h)
        out.append(torch.stack(states))
    return list(torch.stack(out, dim=1))  # per time step, (batch, n)


@pytest.mark.parametrize("nonlinearity", ["linear", "tanh"])
def test_unroll_matches_the_formula(nonlinearity):
    model = RNN(3, 5, nonlinearity=nonlinearity, seed=1, dtype=torch.float64)
    with torch.no_grad():
        model.b.normal_()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    h0 = torch.randn(2, 5, dtype=torch.float64)
    ours = model.unroll(x, h0)
    expected = reference_states(model, x, h0)
    assert len(ours) == 8
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_tanh_rnn_matches_torch_nn_rnn():
    model = RNN(3, 6, nonlinearity="tanh", seed=2)
    with torch.no_grad():
        model.b.normal_()
    reference = torch.nn.RNN(3, 6, nonlinearity="tanh", batch_first=True)
    with torch.no_grad():
        reference.weight_hh_l0.copy_(model.W)
        reference.weight_ih_l0.copy_(model.U)
        reference.bias_hh_l0.copy_(model.b)
        reference.bias_ih_l0.zero_()
    x, h0 = torch.randn(4, 9, 3), torch.randn(4, 6)
    outputs, last = model(x, h0)
    ref_outputs, ref_last = reference(x, h0.unsqueeze(0))
    torch.testing.assert_close(outputs, ref_outputs)
    torch.testing.assert_close(last, ref_last[0])


def test_forward_with_readout_and_default_zero_state():
    model = RNN(2, 4, output_size=3, nonlinearity="linear", bias=False)
    x = torch.randn(5, 6, 2)
    outputs, last = model(x)
    states = model.unroll(x, torch.zeros(5, 4))
    assert outputs.shape == (5, 6, 3)
    torch.testing.assert_close(last, states[-1])
    torch.testing.assert_close(outputs, model.readout(torch.stack(states[1:], dim=1)))


def test_recurrent_matrix_is_used_and_copied():
    W = torch.eye(3) * 0.5
    model = RNN(1, 3, recurrent_matrix=W, nonlinearity="linear", bias=False)
    torch.testing.assert_close(model.W.detach(), W)
    with torch.no_grad():
        model.W.mul_(2)
    assert torch.equal(W, torch.eye(3) * 0.5)  # the caller's tensor is untouched


def test_default_matrix_has_spectral_radius_near_one_and_seeds_repeat():
    a, b = RNN(1, 200, seed=3), RNN(1, 200, seed=3)
    assert torch.equal(a.W, b.W) and torch.equal(a.U, b.U)
    rho = torch.linalg.eigvals(a.W.double()).abs().max().item()
    assert 0.9 < rho < 1.1  # circular law: radius 1 for variance 1/n


@pytest.mark.parametrize("nonlinearity", ["linear", "tanh"])
def test_state_jacobians_match_autograd(nonlinearity):
    model = RNN(2, 4, nonlinearity=nonlinearity, seed=4, dtype=torch.float64)
    with torch.no_grad():
        model.b.normal_()
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    states = model.unroll(x, torch.randn(1, 4, dtype=torch.float64))
    jacobians = model.state_jacobians(states)
    assert jacobians.shape == (1, 5, 4, 4)
    for t in range(1, 6):
        expected = torch.autograd.functional.jacobian(
            lambda h, t=t: model.step(h, x[:, t - 1]), states[t - 1].detach()
        )[0, :, 0, :]
        torch.testing.assert_close(jacobians[0, t - 1], expected)


def test_float64_parameters():
    model = RNN(1, 3, output_size=1, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"hidden_size": 0}, ValueError, "hidden_size"),
        ({"hidden_size": 2.0}, TypeError, "hidden_size"),
        ({"input_size": True}, TypeError, "input_size"),
        ({"nonlinearity": "relu"}, ValueError, "nonlinearity"),
        ({"recurrent_matrix": torch.eye(2)}, ValueError, "recurrent_matrix"),
        ({"recurrent_matrix": [[1.0]]}, TypeError, "recurrent_matrix"),
        ({"output_size": 0}, ValueError, "output_size"),
        ({"dtype": torch.int64}, TypeError, "dtype"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, message):
    arguments = {"input_size": 1, "hidden_size": 3, **kwargs}
    with pytest.raises(error, match=message):
        RNN(**arguments)


def test_bad_inputs_name_themselves():
    model = RNN(2, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(4, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(1, 4, 3))
    with pytest.raises(TypeError, match="x must be a Tensor"):
        model([[1.0, 2.0]])
    with pytest.raises(ValueError, match="h0 must have shape"):
        model(torch.randn(2, 4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="states"):
        model.state_jacobians(torch.zeros(3))


def test_initial_state_defaults_to_zeros_and_passes_h0_through():
    model = RNN(2, 3, dtype=torch.float64)
    x = torch.zeros(4, 5, 2, dtype=torch.float64)
    assert torch.equal(model.initial_state(x), torch.zeros(4, 3, dtype=torch.float64))
    h0 = torch.randn(4, 3)
    assert model.initial_state(x, h0) is h0


def test_tied_lm_shares_one_tensor_between_embedding_and_head():
    from clipping_lib.lab.models import TiedLM, tied_lm_with_grads

    model = tied_lm_with_grads()
    assert model.head.weight is model.embed.weight
    assert len(list(model.parameters())) == 3  # deduplicated
    assert model.embed.weight.grad is not None
    assert model(torch.tensor([1, 2])).shape == (2, 50)
    with pytest.raises(ValueError, match="width"):
        TiedLM(width=0)
