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


# --- issue 20, item 7: layers that mix examples, and float16 per-sample gradients ---


def _bn_model(**kwargs):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, **kwargs), torch.nn.Linear(4, 1)
    )


def test_batchnorm_in_training_mode_is_refused_by_name():
    model, x, y = _bn_model(), torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(ValueError, match=r"BatchNorm1d at '1'.*GroupNorm"):
        per_sample_grads(model, mse, x, y)


def test_batchnorm_without_running_stats_is_refused_even_in_eval_mode():
    # it normalises with the batch's statistics always: each example alone is another model
    model, x, y = _bn_model(track_running_stats=False).eval(), torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        per_sample_grads(model, mse, x, y)


def test_batchnorm_in_eval_mode_with_running_stats_mixes_nothing():
    model, x, y = _bn_model().eval(), torch.randn(8, 3), torch.randn(8, 1)
    grads = per_sample_grads(model, mse, x, y)
    mse(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].mean(0), p.grad, rtol=1e-5, atol=1e-6)


def test_float16_per_sample_norms_are_float32_and_large_examples_are_clipped_not_dropped():
    grads = {"w": torch.full((3, 300), 20.0, dtype=torch.float16)}  # norm 346: > 256
    grads["w"][0] = 0.5
    norms = per_sample_norms(grads)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms[1], torch.tensor(20.0 * 300**0.5), rtol=1e-3, atol=0)
    clipped = clip_per_sample(grads, 1.0)["w"]
    assert clipped.dtype == torch.float16
    size = torch.linalg.vector_norm(clipped.float(), dim=1)
    torch.testing.assert_close(size[1:], torch.ones(2), rtol=2e-3, atol=0)  # before: 0
    torch.testing.assert_close(clipped[0], grads["w"][0] / (0.5 * 300**0.5), rtol=2e-3, atol=0)
