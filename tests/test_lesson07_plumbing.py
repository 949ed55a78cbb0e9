"""Checks that left notebook 07 (plumbing, not lessons): percentile thresholds on the
monitored run, each clipper's statistics across a NaN step, and a resumed ZClip."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.lab.panels.adaptive import RUN, STEPS, WATCH
from clipping_lib.lab.spikes import spiky_adding_task
from clipping_lib.lab.training import train_rnn
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import NormClip


def test_a_percentile_threshold_clips_the_rest_and_the_spikes_form_their_own_mode():
    task, spikes = spiky_adding_task(STEPS, RUN["batch_size"], seed=0)
    monitor = ClipMonitor(NormClip(1.0))
    train_rnn(task, monitor, steps=WATCH, **RUN)
    history = monitor.history()
    percentiles = history.percentiles((90, 95))
    assert abs(np.mean(history.norm > percentiles[90]) - 0.10) < 0.01
    assert abs(np.mean(history.norm > percentiles[95]) - 0.05) < 0.01
    assert history.norm[spikes[spikes < WATCH]].min() > 10 * percentiles[95]


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def _one_step(layer, clipper, scale=1.0, bad=None):
    layer.zero_grad()
    layer(torch.randn(8, 4)).pow(2).mean().backward()
    for p in layer.parameters():
        p.grad.mul_(scale)
    if bad is not None:
        layer.weight.grad[0, 0] = bad  # what an fp16 overflow leaves behind
    return clipper(layer.parameters())


@pytest.mark.parametrize("make", [lambda: NormClip(1.0), lambda: AutoClip(10),
                                  lambda: ZClip(warmup_steps=5), lambda: AGC(0.05)])  # fmt: skip
def test_after_a_nan_step_the_threshold_is_finite_and_the_next_spike_is_clipped(layer, make):
    clipper = make()
    for _ in range(10):
        _one_step(layer, clipper)
    nan_step = _one_step(layer, clipper, bad=math.nan)
    assert not torch.isfinite(layer.weight.grad).all()  # still non-finite: a GradScaler skips
    assert not bool(nan_step.clipped) and math.isnan(nan_step.total_norm.item())
    spike = _one_step(layer, clipper, scale=1000.0)
    assert bool(spike.clipped)
    assert math.isfinite(spike.threshold.item()) or isinstance(clipper, AGC)


def test_a_zclip_resumed_from_a_checkpoint_has_the_saved_state(layer):
    clipper = ZClip(warmup_steps=5)
    for _ in range(8):
        _one_step(layer, clipper)
    buffer = io.BytesIO()
    torch.save({"model": layer.state_dict(), "clipper": clipper.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = ZClip(warmup_steps=5)
    resumed.load_state_dict(checkpoint["clipper"])
    assert torch.equal(resumed.mean, clipper.mean) and resumed.steps == clipper.steps
