"""lab.spike_mechanisms and notebook 12's panel: the written-out AdamW equals torch's, the
probes change only what they claim, the cached runs match a fresh rebuild."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.panels.spikes_forensics import collapse_curves, collapse_panel
from clipping_lib.lab.spike_mechanisms import (
    SPIKES_PATH,
    _runs,
    adamw_step,
    collapse_bound,
    load_spike_data,
    muon_groups,
    newton_schulz_probe,
    probed_gpt,
    run_cached,
    train_muon,
    train_probe,
    update_rms_clip,
)


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return CharCorpus.torch_source()


@pytest.fixture(scope="module")
def tiny(corpus) -> GPTConfig:
    return GPTConfig(corpus.vocab_size, context=16, width=16, layers=1, heads=2)


def test_written_out_adamw_equals_torch():
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    optimizer = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    state: dict = {}
    for _ in range(6):
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        adamw_step(ours, grads, state, lr=1e-2, decay=1e-2 * 0.1)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)


def test_update_clipping_bounds_the_rms_and_names_bad_input():
    u = torch.full((10,), 3.0)
    assert update_rms_clip(u, 1.0).pow(2).mean().sqrt().item() == pytest.approx(1.0)
    small = torch.full((10,), 0.5)
    assert torch.equal(update_rms_clip(small, 1.0), small)
    with pytest.raises(ValueError, match="d must"):
        update_rms_clip(u, 0.0)
    with pytest.raises(TypeError, match="update"):
        update_rms_clip([1.0], 1.0)
    assert collapse_bound(0.9, 0.999) == pytest.approx(0.1 / math.sqrt(0.001))
    with pytest.raises(ValueError, match="beta"):
        collapse_bound(0.9, 1.0)


def test_probed_gpt_is_the_same_gpt_and_qk_norm_bounds_the_logits(tiny):
    ids = torch.randint(tiny.vocab_size, (2, tiny.context))
    plain, probed = GPT(tiny, seed=3), probed_gpt(tiny, seed=3)
    torch.testing.assert_close(plain(ids), probed(ids))
    assert probed.blocks[0].attn.max_logit > 0
    normed = probed_gpt(tiny, seed=3, qk_norm=True)
    with torch.no_grad():  # huge query/key weights: qk-layernorm still bounds every logit
        normed.blocks[0].attn.qkv.weight.mul_(1e3)
        probed.blocks[0].attn.qkv.weight.mul_(1e3)
    normed(ids), probed(ids)
    head = tiny.width // tiny.heads
    assert normed.blocks[0].attn.max_logit <= head / math.sqrt(head) + 1e-4
    assert probed.blocks[0].attn.max_logit > 1e3


def test_a_quiet_stretch_then_an_ordinary_gradient_makes_a_large_update(corpus, tiny):
    kwargs = dict(steps=660, lr=3e-3, quiet=(40, 640, 0.0), betas=(0.9, 0.99), min_ratio=1.0)
    quiet = train_probe(corpus, tiny, **kwargs)
    assert np.isnan(quiet.loss[40:640]).all()  # no forward pass while the gradients are zero
    ratio = quiet.update_norm[640] / np.median(quiet.update_norm[20:40])
    assert ratio > 1.6
    clipped = train_probe(corpus, tiny, max_norm=0.01, **kwargs)  # clips every step
    assert clipped.update_norm[640] / np.median(clipped.update_norm[20:40]) > 0.8 * ratio
    capped = train_probe(corpus, tiny, update_clip=0.1, **kwargs)
    assert capped.update_norm[640] < 0.5 * quiet.update_norm[640]


def test_train_probe_refuses_bad_input(corpus, tiny):
    with pytest.raises(ValueError, match="decay"):
        train_probe(corpus, tiny, steps=2, lr=1e-3, decay="cosine")
    with pytest.raises(ValueError, match="lr"):
        train_probe(corpus, tiny, steps=2, lr=0.0)
    with pytest.raises(ValueError, match="clip"):
        train_muon(corpus, tiny, clip="muon only", steps=2)


def test_muon_ignores_the_clip_until_the_newton_schulz_floor(tiny):
    g = torch.randn(16, 16, generator=torch.Generator().manual_seed(0)) * 1e-2
    norms = newton_schulz_probe(g, [1.0, 1e-2, 1e-4, 1e-10])
    assert norms[1] == pytest.approx(norms[0], rel=1e-2)
    assert norms[2] == pytest.approx(norms[0], rel=2e-2)
    assert norms[3] < 0.01 * norms[0]  # the gradient fell below eps = 1e-7: no update
    muon, _ = muon_groups(probed_gpt(tiny))
    assert all(p.ndim == 2 for p in muon) and len(muon) == 4  # qkv, out, two MLP matrices
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz_probe(torch.zeros(3), [1.0])


def test_the_stored_runs_match_a_fresh_rebuild(corpus):
    stored = load_spike_data(SPIKES_PATH)
    runs = _runs(corpus)
    assert set(stored) == set(runs)
    for name in ("muon/global/x1/0", "logit/qk-layernorm/0"):
        fresh = run_cached(corpus, runs[name])
        # rounding grows along training (other blocking, other CPUs): compare the start
        np.testing.assert_allclose(stored[name].loss[:40], fresh.loss[:40], rtol=2e-3)
        np.testing.assert_allclose(stored[name].grad_norm[:20], fresh.grad_norm[:20], rtol=1e-2)


def test_collapse_curves_gradient_clipping_changes_nothing_update_clipping_caps():
    free = collapse_curves(3000, 0.999)
    assert free["relative"][150] > 2 and free["peak"] <= free["bound"] * 1.01
    for threshold in (2.0, 0.5, 0.1):
        clipped = collapse_curves(3000, 0.999, grad_clip=threshold)
        assert clipped["peak"] == pytest.approx(free["peak"], rel=0.05)
    capped = collapse_curves(3000, 0.999, update_clip=1.0)
    assert capped["peak"] < 0.6 * free["peak"]
    assert collapse_curves(3000, 0.95)["peak"] < 0.5 * free["peak"]
    with pytest.raises(ValueError, match="quiet"):
        collapse_curves(-1, 0.999)


def test_every_control_of_the_collapse_panel_redraws():
    panel = collapse_panel()
    for name, value in [("update_clip", "1.0"), ("grad_clip", "0.1"), ("quiet", 100),
                        ("beta2", 0.95), ("quiet", 10000)]:  # fmt: skip
        before = panel.image.value, panel.readout.value
        panel.controls[name].value = value
        assert (panel.image.value, panel.readout.value) != before, name
