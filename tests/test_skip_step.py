"""Skip-step: OLMo-core's z-score rule, with no host sync."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.lab.syncs import CountHostSyncs
from clipping_lib.skip_step import SkipStep, olmo_skip_decision


def test_waits_for_history_then_skips_an_outlier_norm():
    rule = SkipStep(window=10, sigma=6.0, min_history=5)
    decisions = [rule(torch.tensor(2.0 + 0.01 * (t % 3)), torch.tensor(1.0 + 0.01 * (t % 2)))
                 for t in range(12)]  # fmt: skip
    assert not any(bool(d) for d in decisions)
    assert bool(rule(torch.tensor(2.0), torch.tensor(50.0)))  # the norm is far out
    assert bool(rule(torch.tensor(40.0), torch.tensor(1.0)))  # the loss is far out
    assert not bool(SkipStep(window=10, min_history=11)(torch.tensor(9.0), torch.tensor(9.0)))


def test_a_spike_widens_the_history_for_the_next_one():
    rule = SkipStep(window=20, sigma=6.0, min_history=5)
    for t in range(15):
        rule(torch.tensor(2.0 + 0.02 * (t % 3)), torch.tensor(1.0 + 0.02 * (t % 2)))
    assert bool(rule(torch.tensor(2.0), torch.tensor(5.0)))
    # the first spike is now in the history: the same spike is no longer 6 sigma out
    assert not bool(rule(torch.tensor(2.0), torch.tensor(5.0)))


def test_a_constant_history_skips_only_a_rise_as_in_olmo_core():
    # zero standard deviation: x - mean <= 6 * 0 holds for x == mean, so OLMo-core proceeds
    rule = SkipStep(window=10, min_history=3)
    decisions = [bool(rule(torch.tensor(2.0), torch.tensor(1.0))) for _ in range(5)]
    assert decisions == [False] * 5
    assert bool(rule(torch.tensor(2.001), torch.tensor(1.0)))  # any rise is an outlier
    assert not bool(rule(torch.tensor(1.0), torch.tensor(0.5)))  # a drop never is


def test_matches_olmo_core_formula():
    losses, norms = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.1, 0.9, 1.0])
    std, mean = torch.std_mean(norms)  # sample std, as OLMo-core
    for sigma in (1.0, 3.0):
        norm = mean + 2.0 * std
        skip = olmo_skip_decision(losses, norms, torch.tensor(2.5), norm, sigma)
        assert bool(skip) == (2.0 > sigma)
        low = mean - 2.0 * std  # one-sided: a norm far *below* the mean never skips
        assert not bool(olmo_skip_decision(losses, norms, torch.tensor(2.5), low, sigma))


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


# --- issue 20, item 5: OLMo-core's rule as its source has it, and what it gets wrong ---


def _steady(rule: SkipStep, steps: int) -> None:
    for t in range(steps):
        rule(torch.tensor(2.0 + 0.01 * (t % 3)), torch.tensor(1.0 + 0.01 * (t % 2)))


@pytest.mark.parametrize("window", [2, 5, 10, 18])
def test_a_window_below_19_still_skips_a_huge_loss(window):
    rule = SkipStep(window=window)
    assert rule.min_history == window + 1  # OLMo-core's 20 values can never be held
    _steady(rule, 30)
    assert bool(rule(torch.tensor(1e6), torch.tensor(1.0)))


def test_the_default_history_is_olmo_cores():
    # OLMo-core decides once it holds max(20, w // 2) values, this step's included
    assert SkipStep(window=128).min_history == 64
    assert SkipStep(window=30).min_history == 20
    rule = SkipStep(window=128)
    _steady(rule, 62)
    assert not bool(rule(torch.tensor(1e6), torch.tensor(1.0)))  # 63 values held: too few
    rule = SkipStep(window=128)
    _steady(rule, 63)
    assert bool(rule(torch.tensor(1e6), torch.tensor(1.0)))


def test_min_history_larger_than_the_window_is_refused():
    with pytest.raises(ValueError, match=r"min_history must be <= window \+ 1 \(11\)"):
        SkipStep(window=10, min_history=12)
    with pytest.raises(ValueError, match="min_history"):
        SkipStep(window=10, min_history=2)
    assert SkipStep(window=10, min_history=11).min_history == 11


def test_one_nan_loss_is_skipped_and_masked_out_of_the_history():
    rule = SkipStep(window=20, min_history=5)
    _steady(rule, 10)
    assert bool(rule(torch.tensor(math.nan), torch.tensor(1.0)))
    assert bool(rule(torch.tensor(1.0), torch.tensor(math.inf)))
    decisions = [bool(rule(torch.tensor(2.01), torch.tensor(1.0))) for _ in range(20)]
    assert not any(decisions)  # before: the NaN in the window skipped the next 20 steps
    assert torch.isnan(rule.state_dict()["losses"]).sum() == 0  # the gaps have rolled out


def test_a_non_finite_value_is_skipped_even_before_the_history_is_long_enough():
    rule = SkipStep(window=10, min_history=5)
    assert bool(rule(torch.tensor(math.inf), torch.tensor(1.0)))
    assert not bool(rule(torch.tensor(2.0), torch.tensor(1.0)))


def test_state_dict_resumes_exactly():
    import io

    values = [(2.0 + 0.1 * (t % 4), 1.0 + 0.05 * (t % 3)) for t in range(30)]
    values[12], values[20] = (50.0, 1.0), (math.nan, 1.0)
    whole = SkipStep(window=8, min_history=4)
    expected = [bool(whole(torch.tensor(a), torch.tensor(b))) for a, b in values]
    first = SkipStep(window=8, min_history=4)
    for a, b in values[:15]:
        first(torch.tensor(a), torch.tensor(b))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = SkipStep(window=8, min_history=4)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.steps == 15
    got = [bool(resumed(torch.tensor(a), torch.tensor(b))) for a, b in values[15:]]
    assert got == expected[15:] and any(expected)
    with pytest.raises(ValueError, match="window=8"):
        SkipStep(window=9).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="missing"):
        SkipStep(window=8).load_state_dict({"steps": 0})


def test_the_answer_is_on_the_losss_device_in_every_phase():
    rule = SkipStep(window=4, min_history=3)
    for _ in range(6):  # warm-up and after
        decision = rule(torch.tensor(1.0, device="meta"), torch.tensor(1.0, device="meta"))
        assert decision.device.type == "meta" and decision.dtype == torch.bool


def test_bad_losses_and_norms_are_named():
    rule = SkipStep(window=4)
    with pytest.raises(TypeError, match="loss must be a Tensor or a real number, got str"):
        rule("2.0", torch.tensor(1.0))
    with pytest.raises(TypeError, match="norm"):
        rule(torch.tensor(1.0), None)
    with pytest.raises(ValueError, match=r"loss must hold one value, got shape \(2,\)"):
        rule(torch.ones(2), torch.tensor(1.0))
    assert not bool(rule(2.0, 1.0))  # Python numbers are fine
