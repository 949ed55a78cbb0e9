"""ClipMonitor and NormHistory: recording without host syncs, clip rate, percentiles, spikes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_params
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from clipping_lib.lab.plots import plot_norm_history
from clipping_lib.monitor import ClipMonitor, NormHistory
from clipping_lib.strategies import ClipStep, NoClip, NormClip


def history_of(norms, threshold=1.0) -> NormHistory:
    norms = np.asarray(norms, dtype=float)
    return NormHistory(norms, np.full(len(norms), threshold), norms > threshold)


def test_monitor_records_what_the_clipper_returned():
    params = make_params([(3, 4), (4,)])
    monitor = ClipMonitor(NormClip(1.0))
    expected = []
    for k, scale in enumerate([0.1, 5.0, 0.2, 3.0]):
        for p in params:
            p.grad = torch.full(p.shape, scale)
        expected.append(torch.cat([p.grad.flatten() for p in params]).norm().item())
        step = monitor(params)
        assert isinstance(step, ClipStep) and len(monitor) == k + 1
    history = monitor.history()
    np.testing.assert_allclose(history.norm, expected, rtol=1e-6)
    np.testing.assert_array_equal(history.clipped, [False, True, False, True])
    np.testing.assert_array_equal(history.threshold, [1.0] * 4)
    assert history.clip_rate == 0.5


def test_recording_does_not_sync(monkeypatch):
    monitor = ClipMonitor(NoClip())
    params = make_params([(5,)])

    def sync(*_args, **_kwargs):
        raise AssertionError("host sync")

    for name in ("item", "__bool__", "__float__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for _ in range(3):
        monitor(params)
    monkeypatch.undo()
    assert len(monitor.history()) == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1e3), min_size=1, max_size=50))
def test_percentiles_and_clip_rate_match_numpy(norms):
    history = history_of(norms, threshold=10.0)
    percentiles = history.percentiles((5, 50, 95))
    np.testing.assert_allclose(list(percentiles.values()), np.percentile(norms, [5, 50, 95]))
    assert history.clip_rate == pytest.approx(np.mean(np.asarray(norms) > 10.0))


def test_a_threshold_at_the_q_th_percentile_clips_about_100_minus_q_percent():
    norms = np.random.default_rng(0).lognormal(size=10_000)
    threshold = history_of(norms).percentiles((90,))[90.0]
    assert history_of(norms, threshold).clip_rate == pytest.approx(0.10, abs=1e-3)


def test_spikes_are_measured_against_the_median_of_the_steps_before():
    norms = np.ones(30)
    norms[[10, 20]] = [6.0, 4.0]  # 6 is a spike at factor 5, 4 is not
    norms[21] = 50.0  # right after a spike: the median of the window is still 1
    history = history_of(norms)
    np.testing.assert_array_equal(history.spikes(factor=5.0, window=5), [10, 21])
    np.testing.assert_array_equal(history.spikes(factor=3.0, window=5), [10, 20, 21])
    assert history_of([100.0]).spikes().size == 0


def test_spikes_reference_loop():
    norms = np.random.default_rng(1).lognormal(sigma=1.0, size=200)
    expected = [t for t in range(1, 200) if norms[t] > 3.0 * np.median(norms[max(0, t - 7) : t])]
    np.testing.assert_array_equal(history_of(norms).spikes(factor=3.0, window=7), expected)


def test_summary():
    summary = history_of([1.0, 2.0, 3.0, 100.0], threshold=2.5).summary()
    assert summary["steps"] == 4 and summary["clip_rate"] == 0.5
    assert summary["norm_p50"] == 2.5 and summary["norm_max"] == 100.0
    assert summary["spikes"] == 1


def test_bad_input():
    with pytest.raises(ValueError, match="one entry per step"):
        NormHistory(np.ones(3), np.ones(2), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="q must be"):
        history_of([1.0]).percentiles((101,))
    with pytest.raises(ValueError, match="empty"):
        ClipMonitor(NoClip()).history().percentiles()
    with pytest.raises(ValueError, match="factor"):
        history_of([1.0, 2.0]).spikes(factor=0)
    with pytest.raises(ValueError, match="window"):
        history_of([1.0, 2.0]).spikes(window=0)
    with pytest.raises(TypeError, match="clipper"):
        ClipMonitor(1.0)
    with pytest.raises(TypeError, match="step"):
        ClipMonitor(NoClip()).record((1.0, 1.0, True))


def test_plot_draws_norm_threshold_and_clip_events():
    history = history_of([0.5, 2.0, 0.7, 3.0], threshold=1.0)
    figure = Figure()
    artists = plot_norm_history(figure.add_subplot(), history, spikes=True)
    np.testing.assert_array_equal(artists["norm"].get_ydata(), history.norm)
    np.testing.assert_array_equal(artists["threshold"].get_ydata(), [1.0] * 4)
    np.testing.assert_array_equal(artists["clipped"].get_xdata(), [1, 3])
    assert "50%" in artists["clipped"].get_label()
    empty = plot_norm_history(Figure().add_subplot(), ClipMonitor(NoClip()).history())
    assert len(empty["norm"].get_xdata()) == 0


def test_buffers_grow_past_their_capacity_and_keep_every_step():
    monitor = ClipMonitor(NormClip(1.0), capacity=2)
    params = make_params([(4,)])
    for k in range(9):
        params[0].grad = torch.full((4,), 0.1 * k)
        monitor(params)
    assert len(monitor) == 9 and len(monitor.steps) == 9
    np.testing.assert_allclose(monitor.history().norm, [0.2 * k for k in range(9)], rtol=1e-6)
    assert [bool(s.clipped) for s in monitor.steps] == [0.2 * k > 1.0 - 1e-6 for k in range(9)]


def test_state_dict_of_a_monitor_whose_clipper_has_no_state():
    monitor = ClipMonitor(NormClip(1.0))
    monitor.record(ClipStep(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(True)))
    state = monitor.state_dict()
    assert "clipper" not in state
    resumed = ClipMonitor(NormClip(1.0))
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.history().norm, [2.0])
    with pytest.raises(ValueError, match="state_dict"):
        resumed.load_state_dict({"norm": torch.ones(1)})
    with pytest.raises(ValueError, match="length"):
        resumed.load_state_dict(
            {"norm": torch.ones(2), "threshold": torch.ones(1), "clipped": torch.ones(1) > 0}
        )


# --- issue 20, items 1 and 6: steps without gradients and NaN steps are not measurements ---


def test_percentiles_and_summary_ignore_nan_steps():
    norms = np.array([1.0, 2.0, np.nan, 3.0, 4.0, np.inf, 5.0])
    history = history_of(norms, threshold=3.5)
    finite = norms[np.isfinite(norms)]
    assert history.percentiles((50, 90)) == pytest.approx(
        dict(zip((50.0, 90.0), np.percentile(finite, (50, 90)), strict=True))
    )
    summary = history.summary()
    assert summary["steps"] == 7 and summary["norm_max"] == 5.0
    assert summary["norm_p50"] == 3.0 and summary["clip_rate"] == pytest.approx(2 / 5)
    assert all(np.isfinite(v) for v in summary.values())


def test_spikes_skip_nan_steps_and_their_baselines():
    norms = np.array([1.0, np.nan, 1.0, np.nan, 1.0, 50.0, np.inf, 1.0])
    assert history_of(norms).spikes(factor=5, window=4).tolist() == [5]


def test_a_history_of_only_unmeasured_steps():
    history = history_of([np.nan, np.nan])
    with pytest.raises(ValueError, match="finite norm"):
        history.percentiles()
    summary = history.summary()
    assert summary["steps"] == 2 and summary["clip_rate"] == 0.0 and summary["spikes"] == 0
    assert np.isnan(summary["norm_p50"]) and np.isnan(summary["norm_max"])


@pytest.mark.parametrize("clipper", [NoClip(), NormClip(1.0)], ids=repr)
def test_monitor_keeps_a_step_without_gradients_in_place_but_out_of_the_statistics(clipper):
    monitor = ClipMonitor(clipper)
    p = torch.nn.Parameter(torch.zeros(2))
    for n in (0.5, None, 3.0, None):
        p.grad = None if n is None else torch.tensor([n, 0.0])
        step = monitor([p])
        assert step.has_grads == (n is not None)
    history = monitor.history()
    assert len(history) == 4 and np.isnan(history.norm[[1, 3]]).all()
    assert history.percentiles((0, 100)) == {0.0: 0.5, 100.0: 3.0}
    expected = 0.5 if isinstance(clipper, NormClip) else 0.0
    assert history.clip_rate == expected
