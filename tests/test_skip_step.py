"""Skip-step: OLMo-core's z-score rule, with no host sync."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.syncs import CountHostSyncs
from clipping_lib.skip_step import SkipStep, skip_decision


def test_waits_for_history_then_skips_an_outlier_norm():
    rule = SkipStep(window=10, sigma=6.0, min_history=5)
    decisions = [rule(torch.tensor(2.0 + 0.01 * (t % 3)), torch.tensor(1.0 + 0.01 * (t % 2)))
                 for t in range(12)]  # fmt: skip
    assert not any(bool(d) for d in decisions)
    assert bool(rule(torch.tensor(2.0), torch.tensor(50.0)))  # the norm is far out
    assert bool(rule(torch.tensor(40.0), torch.tensor(1.0)))  # the loss is far out
    assert not bool(SkipStep(window=10, min_history=20)(torch.tensor(9.0), torch.tensor(9.0)))


def test_a_spike_widens_the_history_for_the_next_one():
    rule = SkipStep(window=20, sigma=6.0, min_history=5)
    for t in range(15):
        rule(torch.tensor(2.0 + 0.02 * (t % 3)), torch.tensor(1.0 + 0.02 * (t % 2)))
    assert bool(rule(torch.tensor(2.0), torch.tensor(5.0)))
    # the first spike is now in the history: the same spike is no longer 6 sigma out
    assert not bool(rule(torch.tensor(2.0), torch.tensor(5.0)))


def test_a_constant_history_skips_everything_as_in_olmo_core():
    # zero standard deviation: the z-score is NaN or inf, and the step is skipped
    rule = SkipStep(window=10, min_history=3)
    decisions = [bool(rule(torch.tensor(2.0), torch.tensor(1.0))) for _ in range(5)]
    assert decisions == [False, False, True, True, True]


def test_matches_olmo_core_formula():
    losses, norms = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.1, 0.9, 1.0])
    std, mean = torch.std_mean(norms)  # sample std, as OLMo-core
    for sigma in (1.0, 3.0):
        norm = mean + 2.0 * std
        assert bool(skip_decision(losses, norms, torch.tensor(2.5), norm, sigma)) == (2.0 > sigma)


def test_no_host_sync_and_bad_arguments():
    rule = SkipStep(window=8, min_history=3)
    with CountHostSyncs() as syncs:
        for t in range(10):
            rule(torch.tensor(1.0 + t), torch.tensor(1.0))
    assert syncs.count == 0
    with pytest.raises(ValueError, match="sigma"):
        SkipStep(sigma=0)
    with pytest.raises(ValueError, match="window"):
        SkipStep(window=1)
