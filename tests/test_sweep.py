"""The vectorised sweep equals one-at-a-time training; the stored sweep equals a fresh run;
Adam's updates are scale-free; a spike inflates v unless clipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipping_lib.adaptive import AutoClip, ZClip
from clipping_lib.lab.adam_trace import adamw_updates, trace_adamw
from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.schedules import warmup_cosine
from clipping_lib.lab.sweep import (
    CLEAN,
    CLEAN_CLIP,
    METHODS,
    REFERENCES,
    SWEEP_CONFIG,
    SWEEP_LRS,
    SWEEP_PATH,
    SWEEP_SEEDS,
    SweepConfig,
    corrupt,
    load_sweep,
    sweep_report,
    sweep_verdicts,
    train_runs,
)
from clipping_lib.lab.threads import single_thread
from clipping_lib.skip_step import SkipStep
from clipping_lib.strategies import NoClip, NormClip

SMALL = SweepConfig(
    width=16, layers=1, heads=2, context=16, batch_size=4, steps=30, warmup=4,
    zclip=(0.9, 1.5, 6), skip=(8, 2.0, 6), corrupt_steps=(12, 20), eval_batches=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return CharCorpus.torch_source()


def one_run(corpus: CharCorpus, config: SweepConfig, lr: float, method: str, seed: int) -> dict:
    """The same run written the plain way: torch.optim.AdamW and the library's clippers."""
    model = GPT(config.gpt(corpus.vocab_size), seed=seed)
    params = list(model.parameters())
    groups = [  # nanoGPT's configure_optimizers: decay only the tensors with >= 2 dimensions
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.steps, config.warmup)
    )
    alpha, z, warm = config.zclip
    clipper = {
        "none": NoClip(), "clip 1.0": NormClip(config.max_norm), "skip": NoClip(),
        CLEAN: NoClip(), CLEAN_CLIP: NormClip(config.max_norm),
        "zclip": ZClip(alpha, z, warmup_steps=warm),
        "zclip + max 1.0": ZClip(alpha, z, warmup_steps=warm),
        "autoclip": AutoClip(config.autoclip_percentile),
    }[method]  # fmt: skip
    # the ZClip authors' max_grad_norm: clip_grad_norm_ after their rule (zclip.py, step())
    cap = NormClip(config.zclip_max_norm) if method == "zclip + max 1.0" else None
    window, sigma, min_history = config.skip
    skipper = SkipStep(window, sigma, min_history)
    ids, targets = corpus.batches(config.steps, config.batch_size, config.context, seed=seed)
    if method not in (CLEAN, CLEAN_CLIP):
        targets = corrupt(targets, config.corrupt_steps, corpus.vocab_size - 1)
    loss_log, norm_log, acted = [], [], []
    for step in range(config.steps):
        optimizer.zero_grad()
        loss = model.loss(ids[step], targets[step])
        loss.backward()
        record = clipper(params)
        capped = cap is not None and bool(cap(params).clipped)
        skip = bool(skipper(loss, record.total_norm)) and method == "skip"
        if not skip:
            optimizer.step()
        scheduler.step()
        loss_log.append(loss.item())
        norm_log.append(record.total_norm.item())
        acted.append(skip if method == "skip" else bool(record.clipped) or capped)
    return {"loss": np.array(loss_log), "norm": np.array(norm_log), "acted": np.array(acted)}


def test_batched_runs_equal_one_at_a_time_runs(corpus):
    batched = train_runs(corpus, SMALL, (3e-3,), (CLEAN, CLEAN_CLIP, *METHODS), (0, 1))
    for method in (CLEAN, CLEAN_CLIP, *METHODS):
        for seed in (0, 1):
            row = batched.select(3e-3, method, seed)
            with single_thread():
                single = one_run(corpus, SMALL, 3e-3, method, seed)
            np.testing.assert_allclose(batched.loss[row], single["loss"], rtol=2e-4, err_msg=method)
            np.testing.assert_allclose(
                batched.grad_norm[row], single["norm"], rtol=2e-3, err_msg=method
            )
            np.testing.assert_array_equal(batched.clipped[row], single["acted"], err_msg=method)
    # every method acted somewhere in these runs, so the comparison covered its rule
    for method in METHODS[1:]:
        assert batched.clipped[batched.method == method].any(), method


def test_runs_with_one_seed_share_start_and_data(corpus):
    result = train_runs(corpus, SMALL, (1e-3, 1e-2), ("none",), (0,), stop_after=1)
    assert result.loss[0, 0] == result.loss[1, 0]


def test_stored_sweep_matches_a_fresh_run(corpus):
    stored = load_sweep(SWEEP_PATH)
    assert stored.config == SWEEP_CONFIG
    assert len(stored.lr) == len(SWEEP_LRS) * len(REFERENCES + METHODS) * len(SWEEP_SEEDS)
    assert stored.methods == (*REFERENCES, *METHODS)
    steps = 41  # up to the first corrupted batch (step 40), at a learning rate where the
    # rounding of other batch shapes (other blocking) stays at float32's level that long
    fresh = train_runs(corpus, SWEEP_CONFIG, (0.003,), stored.methods, (0,), stop_after=steps)
    for method in stored.methods:
        row, new = stored.select(0.003, method, 0), fresh.select(0.003, method, 0)
        np.testing.assert_allclose(stored.loss[row, :steps], fresh.loss[new], rtol=1e-3)
        np.testing.assert_allclose(stored.grad_norm[row, :steps], fresh.grad_norm[new], rtol=1e-2)
    none, clean = stored.select(0.003, "none", 0), stored.select(0.003, CLEAN, 0)
    assert stored.loss[none, 40] > stored.loss[clean, 40] + 1.0  # the first corrupted batch


def test_references_see_clean_batches_and_zclip_max_caps_at_one(corpus):
    result = train_runs(corpus, SMALL, (3e-3,), (CLEAN, "none", "zclip + max 1.0"), (0,))
    clean, none = result.select(3e-3, CLEAN, 0), result.select(3e-3, "none", 0)
    spikes = list(SMALL.corrupt_steps)
    np.testing.assert_array_equal(result.loss[none, : spikes[0]], result.loss[clean, : spikes[0]])
    assert np.all(result.loss[none, spikes] > result.loss[clean, spikes] + 0.3)
    capped = result.select(3e-3, "zclip + max 1.0", 0)
    # during ZClip's warm-up the authors' max_grad_norm clips as clip_grad_norm_(..., 1.0)
    warm = SMALL.zclip[2]
    np.testing.assert_array_equal(
        result.clipped[capped, :warm], result.grad_norm[capped, :warm] > SMALL.zclip_max_norm
    )


def stored_table():
    stored = load_sweep(SWEEP_PATH)
    return stored, stored.final(), np.unique(stored.lr)


def test_verdicts_are_read_off_the_table():
    stored, table, lrs = stored_table()
    lines = sweep_verdicts(stored, baseline=3.0)
    none = table[:, stored.methods.index("none")]
    for i, lr in enumerate(lrs):
        block = lines[lines.index(f"lr {lr:g}:") + 1 : lines.index(f"lr {lr:g}:") + 5]
        every = [m for m in METHODS[1:] if np.all(none[i] > table[i, stored.methods.index(m)])]
        assert any(line.endswith(": " + (", ".join(every) or "no method")) for line in block)
        cost = (none[i] - table[i, stored.methods.index(CLEAN)]).mean()
        assert f"the spikes cost {cost:+.3f}" in block[0]
    best = lrs[np.argmin(table[:, stored.methods.index("clip 1.0")].mean(1))]
    assert f"clip 1.0 {best:g}," in lines[0]


def test_report_prints_every_setting_and_paired_gains():
    stored, table, _ = stored_table()
    report = sweep_report(stored, baseline=3.0)
    for method in stored.methods:
        assert method in report
    gain = table[0, stored.methods.index("none")] - table[0, stored.methods.index("skip")]
    assert f"{gain.mean():+8.3f} {np.sum(gain > 0)}/{table.shape[2]}" in report


def test_sweep_refuses_bad_input(corpus):
    with pytest.raises(ValueError, match="methods"):
        train_runs(corpus, SMALL, (1e-3,), ("clip 2.0",))
    with pytest.raises(ValueError, match="lrs"):
        train_runs(corpus, SMALL, (0.0,))
    with pytest.raises(ValueError, match="no run"):
        load_sweep(SWEEP_PATH).select(0.5, "none", 0)


def test_save_and_load_round_trip(corpus, tmp_path):
    result = train_runs(corpus, SMALL, (1e-3,), ("none", "skip"), (0,), stop_after=3)
    result.save(tmp_path / "s.npz")
    again = load_sweep(tmp_path / "s.npz")
    assert again.config == SMALL
    np.testing.assert_array_equal(again.method, result.method)
    np.testing.assert_allclose(again.loss, result.loss, rtol=1e-6)


def recorded_gradients(corpus: CharCorpus, steps: int = 6) -> list[list[torch.Tensor]]:
    model = GPT(GPTConfig(corpus.vocab_size, context=16, width=16, layers=1, heads=2)).double()
    ids, targets = corpus.batches(steps, 4, 16, seed=0)
    grads = []
    for i in range(steps):
        model.zero_grad()
        model.loss(ids[i], targets[i]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    return grads


def test_adam_updates_are_scale_free_until_eps(corpus):
    grads = recorded_gradients(corpus)
    # With eps negligible even for gradients that are rounding noise (about 1e-24), a
    # power-of-two scale changes nothing at all: m, v and sqrt(v) scale exactly.
    reference = adamw_updates(grads, eps=1e-200)
    for c in (2.0**-8, 2.0**12):
        assert torch.equal(adamw_updates(grads, c, eps=1e-200), reference)
    with_eps = adamw_updates(grads)
    tiny = adamw_updates(grads, 2.0**-40)
    assert (tiny - with_eps).norm() > 0.5 * with_eps.norm()  # c sqrt(v) << eps: updates collapse


def test_a_spike_inflates_v_unless_clipped(corpus):
    config = GPTConfig(corpus.vocab_size, context=16, width=16, layers=1, heads=2)
    kwargs = dict(steps=20, spike_step=10, spike_factor=100.0, batch_size=4, lr=3e-3)
    free = trace_adamw(corpus, config, **kwargs)
    clipped = trace_adamw(corpus, config, max_norm=1.0, **kwargs)
    assert free.v_sum[10] > 100 * free.v_sum[9]
    assert clipped.v_sum[10] < 5 * clipped.v_sum[9]
    assert np.median(free.fresh_gain[11:20]) < 0.5 * np.median(free.fresh_gain[2:10])
