"""The corpus (deterministic, hashed) and the tiny GPT (loss at initialisation, causality)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from clipping_lib.lab.corpus import CharCorpus, torch_nn_source
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.schedules import warmup_cosine


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return CharCorpus.torch_source()


def test_corpus_is_deterministic(corpus):
    again = CharCorpus.torch_source()
    assert again.sha256 == corpus.sha256 and len(corpus.sha256) == 64
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)
    assert corpus.text == torch_nn_source()
    x1, y1 = corpus.batches(3, 4, 16, seed=7)
    x2, y2 = corpus.batches(3, 4, 16, seed=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_batches_are_next_character_windows(corpus):
    x, y = corpus.batches(2, 5, 12, seed=0)
    assert x.shape == y.shape == (2, 5, 12)
    assert torch.equal(x[..., 1:], y[..., :-1])
    assert corpus.decode(corpus.encode("def forward")) == "def forward"


def test_unigram_baseline_is_between_zero_and_ln_v(corpus):
    assert 0 < corpus.unigram_loss() < math.log(corpus.vocab_size)
    tiny = CharCorpus.from_text("ab" * 50, val_fraction=0.5)
    assert tiny.unigram_loss() == pytest.approx(math.log(2), rel=1e-6)


def test_bad_corpus_input_is_refused(corpus):
    with pytest.raises(ValueError, match="split"):
        corpus.batch(2, 8, torch.Generator(), split="test")
    with pytest.raises(ValueError, match="vocabulary"):
        corpus.encode("\x00")
    with pytest.raises(ValueError, match="val_fraction"):
        CharCorpus.from_text("abc", val_fraction=1.5)


def test_loss_at_initialisation_is_about_ln_vocab(corpus):
    config = GPTConfig(corpus.vocab_size, context=32, width=32, layers=2, heads=4)
    x, y = corpus.batches(4, 8, 32, seed=0)
    for seed in range(3):
        model = GPT(config, seed=seed)
        with torch.no_grad():
            loss = torch.stack([model.loss(x[i], y[i]) for i in range(4)]).mean()
        assert loss.item() == pytest.approx(math.log(corpus.vocab_size), abs=0.1)


def test_sum_reduction_is_mean_times_tokens(corpus):
    model = GPT(GPTConfig(corpus.vocab_size, context=16, width=16, layers=1, heads=2))
    x, y = corpus.batches(1, 4, 16)
    mean, total = model.loss(x[0], y[0]), model.loss(x[0], y[0], reduction="sum")
    torch.testing.assert_close(total, mean * 64)


def test_attention_is_causal():
    model = GPT(GPTConfig(20, context=10, width=16, layers=2, heads=2), seed=1)
    ids = torch.randint(20, (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 20
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0, :6], model(changed)[0, :6])
        assert not torch.allclose(model(ids)[0, 6:], model(changed)[0, 6:])


def test_config_and_length_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(10, width=30, heads=4)
    with pytest.raises(TypeError, match="layers"):
        GPTConfig(10, layers=2.0)
    model = GPT(GPTConfig(10, context=8, width=8, layers=1, heads=2))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_warmup_cosine_shape():
    f = warmup_cosine(100, 10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=1e-3)
    values = [f(t) for t in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(10, 10)


def test_key_bias_gradient_is_rounding_noise(corpus):
    # Adding one vector to every key shifts each row of scores by a constant: softmax ignores
    # it, so the key bias has no gradient in exact arithmetic (notebook 09, section 4a).
    config = GPTConfig(corpus.vocab_size, context=16, width=16, layers=2, heads=2)
    model = GPT(config, seed=0).double()
    x, y = corpus.batches(1, 4, 16, seed=0)
    model.loss(x[0], y[0]).backward()
    for block in model.blocks:
        bias = block.attn.qkv.bias.grad
        query, key, value = bias[:16], bias[16:32], bias[32:]
        assert key.abs().max() < 1e-12 * value.abs().max()
        assert query.abs().max() > 0
