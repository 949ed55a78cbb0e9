"""clipping_lib.lab.noise: the clipping bias and heavy-tail claims of notebook 06."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.lab.noise import (
    NOISES,
    clipped_sgd,
    clipping_fixed_point,
    expected_clipped_gradient,
    noise_tail_ratio,
    sample_noise,
)

THRESHOLDS = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


@pytest.mark.parametrize("kind", NOISES)
def test_noise_is_seeded_and_centred(kind):
    a = sample_noise(kind, (20000,), seed=5)
    assert torch.equal(a, sample_noise(kind, (20000,), seed=5)) and a.dtype == torch.float64
    assert abs(a.median() if kind == "pareto" else a.mean()) < 0.05


def test_bias_grows_as_c_shrinks_with_skewed_noise():
    skewed = clipping_fixed_point(THRESHOLDS, "exponential")
    assert torch.all(skewed.diff() < 0) and skewed[0] > 0.25 and skewed[-1] < 0.01
    # the root is a root
    for c, x in zip(THRESHOLDS.tolist(), skewed.tolist(), strict=True):
        assert abs(expected_clipped_gradient(torch.tensor([x]), c, "exponential")) < 1e-6


@pytest.mark.parametrize("kind", ["gaussian", "pareto"])
def test_no_bias_with_symmetric_noise(kind):
    assert torch.all(clipping_fixed_point(THRESHOLDS, kind).abs() < 1e-6)


def test_clipped_sgd_settles_at_the_fixed_point():
    run = clipped_sgd(
        sample_noise("exponential", (4000, 200), seed=1), lr=0.05, threshold=THRESHOLDS
    )
    predicted = clipping_fixed_point(THRESHOLDS, "exponential")
    assert torch.all((run.tail_mean.mean(dim=-1) - predicted).abs() < 0.03)
    assert run.final.shape == (5, 200)


def test_clipping_bounds_heavy_tailed_excursions_and_barely_touches_gaussian_ones():
    c = torch.tensor([math.inf, 2.0], dtype=torch.float64)
    heavy = clipped_sgd(sample_noise("pareto", (4000, 100), seed=2), lr=0.05, threshold=c)
    light = clipped_sgd(sample_noise("gaussian", (4000, 100), seed=2), lr=0.05, threshold=c)
    assert heavy.tail_max[0].max() > 10 * heavy.tail_max[1].max()
    assert light.tail_max[1].max() > 0.8 * light.tail_max[0].max()
    assert heavy.tail_max[1].max() <= 2.0 + 1e-12  # |x| <= c once x sits inside [-c, c]


def test_unclipped_mean_gradient_is_x():
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.allclose(expected_clipped_gradient(x, math.inf, "gaussian"), x, atol=1e-4)


def test_tail_ratio_separates_light_and_heavy():
    light = noise_tail_ratio(sample_noise("gaussian", (100000,)))
    assert 4 < light < 6
    assert noise_tail_ratio(sample_noise("pareto", (100000,))) > 10 * light


def test_bad_input():
    with pytest.raises(ValueError, match="noise"):
        sample_noise("cauchy", (3,))
    with pytest.raises(ValueError, match="threshold"):
        clipping_fixed_point(-1.0, "gaussian")
    with pytest.raises(ValueError, match="lr"):
        clipped_sgd(torch.zeros(10, 2), lr=2.5, threshold=1.0)
    with pytest.raises(ValueError, match="steps, chains"):
        clipped_sgd(torch.zeros(10), lr=0.1, threshold=1.0)
    with pytest.raises(ValueError, match="threshold"):
        clipped_sgd(torch.zeros(10, 2), lr=0.1, threshold=-1.0)
