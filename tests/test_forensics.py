"""monitor.LayerMonitor: per-layer norms and update ratios with no host sync; the detector
names the layer where a spike starts; a run's log reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPTConfig
from clipping_lib.lab.spike_mechanisms import train_probe
from clipping_lib.lab.syncs import CountHostSyncs
from clipping_lib.monitor import LayerHistory, LayerMonitor, module_of, read_layer_log


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def one_step(model, monitor, optimizer):
    model.zero_grad()
    model(torch.randn(5, 4)).pow(2).sum().backward()
    monitor.record_grads()
    monitor.snapshot()
    optimizer.step()
    monitor.record_update()


def test_layers_group_weight_and_bias_and_values_match_by_hand():
    model = small_model()
    monitor = LayerMonitor(model.named_parameters())
    assert (
        monitor.layers == ("0", "2")
        and module_of("blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv"
    )
    assert monitor.bytes_per_step == 16
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, monitor, optimizer)
    history = monitor.history()
    grads = [p.grad for p in model.parameters()]
    for j, (w, b) in enumerate(((0, 1), (2, 3))):
        expected = torch.cat([grads[w].flatten(), grads[b].flatten()]).norm()
        assert history.grad_norm[0, j] == pytest.approx(expected.item(), rel=1e-6)
        params = list(model.parameters())
        delta = torch.cat([(params[i] - before[i]).flatten() for i in (w, b)]).norm()
        weight = torch.cat([before[i].flatten() for i in (w, b)]).norm()
        assert history.update_ratio[0, j] == pytest.approx((delta / weight).item(), rel=1e-5)


def test_recording_makes_no_host_sync_and_grows_past_capacity():
    model = small_model()
    monitor = LayerMonitor(model.named_parameters(), capacity=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with CountHostSyncs() as counter:
        for _ in range(5):
            model.zero_grad()
            model(torch.randn(5, 4)).pow(2).sum().backward()
            monitor.record_grads()
            monitor.snapshot()
            optimizer.step()
            monitor.record_update()
    assert counter.count == 0
    assert len(monitor) == 5 and monitor.history().grad_norm.shape == (5, 2)
    assert np.isfinite(monitor.history().update_ratio).all()
    monitor.clear()
    assert len(monitor) == 0


def test_attach_records_through_the_optimizer_hooks():
    model = small_model()
    monitor = LayerMonitor(model.named_parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handles = monitor.attach(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    assert len(monitor) == 3 and np.isfinite(monitor.history().update_ratio).all()
    for handle in handles:
        handle.remove()


def test_a_parameter_without_gradient_counts_as_zero():
    model = small_model()
    monitor = LayerMonitor(model.named_parameters())
    model[2].weight.grad = torch.ones_like(model[2].weight)
    monitor.record_grads()
    assert monitor.history().grad_norm[0, 0] == 0.0


def synthetic(first: str, spike_at: int = 30) -> LayerHistory:
    rng = np.random.default_rng(0)
    norms = np.exp(rng.normal(0, 0.1, (60, 3)))
    layers = ("embed", "attn", "head")
    norms[spike_at, layers.index(first)] *= 20
    norms[spike_at + 1 :, :] *= 30  # the spike reaches every layer one step later
    return LayerHistory(layers, norms, np.full((60, 3), 1e-3))


@pytest.mark.parametrize("first", ["embed", "attn", "head"])
def test_the_detector_names_the_layer_where_the_spike_starts(first):
    origin = synthetic(first).spike_origin(factor=5.0, window=10)
    assert origin is not None and origin.step == 30 and origin.layer == first
    assert origin.ratio > 5


def test_no_spike_no_origin_and_bad_arguments_are_named():
    flat = LayerHistory(("a",), np.ones((20, 1)), np.ones((20, 1)))
    assert flat.spike_origin() is None
    with pytest.raises(ValueError, match="factor"):
        flat.spike_origin(factor=0)
    with pytest.raises(ValueError, match="quantity"):
        flat.spike_origin(quantity="loss")
    with pytest.raises(ValueError, match="window"):
        flat.baseline(window=0)
    with pytest.raises(ValueError, match="skip"):
        flat.spike_origin(skip=-1)
    with pytest.raises(ValueError, match="shape"):
        LayerHistory(("a", "b"), np.ones((3, 1)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="empty"):
        LayerMonitor([])
    with pytest.raises(TypeError, match="pairs"):
        LayerMonitor([torch.zeros(2)])
    with pytest.raises(TypeError, match="layer"):
        LayerMonitor(small_model().named_parameters(), layer="by name")


def test_a_log_round_trips_and_a_partial_log_reads_as_nan(tmp_path):
    history = synthetic("attn")
    path = tmp_path / "run.jsonl"
    history.to_jsonl(str(path))
    again = read_layer_log(str(path))
    assert again.layers == history.layers
    np.testing.assert_allclose(again.grad_norm, history.grad_norm, rtol=1e-12)
    assert again.spike_origin(window=10) == history.spike_origin(window=10)
    partial = tmp_path / "partial.jsonl"
    partial.write_text(
        '{"step": 0, "grad_norm/a": 1.0, "loss": 2.0}\n\n{"step": 2, "grad_norm/b": 3}\n'
    )
    log = read_layer_log(str(partial))
    assert log.layers == ("a", "b") and log.grad_norm.shape == (3, 2)
    assert np.isnan(log.grad_norm[1]).all() and np.isnan(log.update_ratio).all()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 0, "grad_norm/a": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_layer_log(str(broken))
    with pytest.raises(ValueError, match="grad_norm"):
        (tmp_path / "none.jsonl").write_text('{"step": 0, "loss": 1}\n')
        read_layer_log(str(tmp_path / "none.jsonl"))


def test_on_the_tiny_gpt_the_detector_finds_a_corrupted_batch():
    corpus = CharCorpus.torch_source()
    config = GPTConfig(corpus.vocab_size, context=16, width=16, layers=1, heads=2)
    trace = train_probe(corpus, config, steps=40, lr=3e-3, corrupt_steps=(30,), layers=True)
    history = trace.meta["layers"]
    assert history.layers[:2] == ("token", "position") and len(history) == 40
    origin = history.spike_origin(factor=5.0, window=10, skip=20)
    assert origin is not None and origin.step == 30
    assert synthetic("attn").spike_origin(window=10, skip=31).step == 31  # the later rise
