"""Per-sample clipping (DP-SGD) against per-example backward passes and the formula."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.per_sample import (
    clip_per_sample,
    dp_sgd_gradient,
    per_sample_grads,
    per_sample_norms,
)


def mse(output, target):
    return torch.mean((output - target) ** 2)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x, y = torch.randn(6, 3), torch.randn(6, 2) * torch.tensor([[1.0], [1], [1], [1], [1], [30]])
    return model, x, y, per_sample_grads(model, mse, x, y)


def test_per_sample_grads_match_one_backward_per_example(setup):
    model, x, y, grads = setup
    for i in range(len(x)):
        model.zero_grad()
        mse(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad)
    expected = torch.stack(
        [torch.cat([g[i].flatten() for g in grads.values()]).norm() for i in range(len(x))]
    )
    torch.testing.assert_close(per_sample_norms(grads), expected)


def test_clip_per_sample_is_exact(setup):
    *_, grads = setup
    norms = per_sample_norms(grads)
    c = float(norms.median())
    clipped_norms = per_sample_norms(clip_per_sample(grads, c))
    torch.testing.assert_close(clipped_norms, torch.clamp(norms, max=c))
    assert torch.equal(per_sample_norms(clip_per_sample(grads, 0.0)), torch.zeros(len(norms)))


def test_dp_sgd_gradient_formula(setup):
    *_, grads = setup
    c, sigma = 0.5, 2.0
    clipped = clip_per_sample(grads, c)
    generator = torch.Generator().manual_seed(3)
    noisy = dp_sgd_gradient(grads, c, sigma, generator=torch.Generator().manual_seed(3))
    for name, g in clipped.items():
        noise = torch.randn(g.shape[1:], generator=generator)
        torch.testing.assert_close(noisy[name], (g.sum(0) + sigma * c * noise) / len(g))
    plain = dp_sgd_gradient(grads, c)
    for name, g in clipped.items():
        torch.testing.assert_close(plain[name], g.mean(0))


def test_one_example_moves_the_update_by_at_most_c_over_b(setup):
    *_, grads = setup
    c = 0.1
    without_last = {k: torch.cat([g[:-1], torch.zeros_like(g[-1:])]) for k, g in grads.items()}
    a, b = dp_sgd_gradient(grads, c), dp_sgd_gradient(without_last, c)
    shift = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert shift <= c / 6 + 1e-7


def test_bad_input(setup):
    model, x, y, grads = setup
    with pytest.raises(ValueError, match="max_norm"):
        clip_per_sample(grads, -1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp_sgd_gradient(grads, 1.0, -1.0)
    with pytest.raises(ValueError, match="differ in length"):
        per_sample_grads(model, mse, x, y[:3])
    with pytest.raises(TypeError, match="model"):
        per_sample_grads(lambda t: t, mse, x, y)


def test_frozen_parameters_get_no_per_sample_gradient(setup):
    _, x, y, _ = setup
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model[0].requires_grad_(False)  # a frozen backbone
    grads = per_sample_grads(model, mse, x, y)
    assert set(grads) == {"2.weight", "2.bias"}
    model.zero_grad()
    mse(model(x[:1]), y[:1]).backward()
    torch.testing.assert_close(grads["2.weight"][0], model[2].weight.grad)


def test_dropout_draws_one_mask_per_example(setup):
    _, x, y, _ = setup
    torch.manual_seed(0)
    layers = torch.nn.Linear(3, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 2)
    model = torch.nn.Sequential(*layers)
    same_x = x[:1].expand(6, 3)  # six copies of one example
    grads = per_sample_grads(model, mse, same_x, y[:1].expand(6, 2))["0.weight"]
    assert grads.shape == (6, 64, 3)
    zero_rows = grads.abs().sum(dim=2) == 0  # a dropped hidden unit has a zero row
    assert not all(torch.equal(zero_rows[0], row) for row in zero_rows[1:])  # masks differ
    model.eval()  # no dropout: the six copies agree
    still = per_sample_grads(model, mse, same_x, y[:1].expand(6, 2))["0.weight"]
    torch.testing.assert_close(still, still[:1].expand_as(still))


def test_dp_noise_is_drawn_on_the_gradients_device():
    grads = {"w": torch.empty(4, 3, device="meta")}
    result = dp_sgd_gradient(grads, max_norm=1.0, noise_multiplier=1.0)
    assert result["w"].device.type == "meta" and result["w"].shape == (3,)
