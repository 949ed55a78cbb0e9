"""Pixel-by-pixel digits: shapes, a deterministic, disjoint, stratified split, the baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab.digits import (
    N_CLASSES,
    SEQUENCE_LENGTH,
    digit_sequences,
    load_digit_images,
    trivial_baseline,
)
from clipping_lib.lab.training import train_many


@pytest.fixture(scope="module")
def split():
    return digit_sequences(0.25, seed=0)


def test_images_are_the_bundled_data_set_scaled_to_unit_range():
    images, labels = load_digit_images()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.dtype == torch.float32 and labels.dtype == torch.long
    assert images.min().item() == 0.0 and images.max().item() == 1.0
    assert torch.equal(torch.unique(labels), torch.arange(N_CLASSES))


def test_images_equal_what_load_digits_returns():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = load_digit_images()
    np.testing.assert_array_equal(images.numpy() * 16.0, digits.images)
    np.testing.assert_array_equal(labels.numpy(), digits.target)


def test_sequences_read_each_image_row_by_row(split):
    train, held_out = split
    assert train.inputs.shape == (train.n, SEQUENCE_LENGTH, 1) == (1347, 64, 1)
    assert held_out.inputs.shape == (450, 64, 1) and held_out.targets.shape == (450,)
    assert train.loss == held_out.loss == "cross_entropy"
    assert train.output_size == N_CLASSES
    images, labels = load_digit_images()
    flat = images.reshape(len(images), -1)
    first = train.inputs[0, :, 0]
    matches = torch.nonzero((flat == first).all(dim=1)).flatten()
    assert len(matches) >= 1 and (labels[matches] == train.targets[0]).all()
    assert torch.equal(flat[matches[0]].reshape(8, 8)[1], first[8:16])  # step 8..15 = row 1


def test_split_is_deterministic_disjoint_and_stratified(split):
    train, held_out = split
    again_train, again_held_out = digit_sequences(0.25, seed=0)
    assert torch.equal(train.inputs, again_train.inputs)
    assert torch.equal(held_out.targets, again_held_out.targets)
    other_train, _ = digit_sequences(0.25, seed=1)
    assert not torch.equal(train.inputs, other_train.inputs)
    train_rows = {tuple(x.tolist()) for x in train.inputs[:, :, 0]}
    held_rows = {tuple(x.tolist()) for x in held_out.inputs[:, :, 0]}
    _, labels = load_digit_images()
    assert train.n + held_out.n == len(labels)
    # the data set holds a few duplicate images; the split itself never repeats an index
    assert len(train_rows & held_rows) <= 5
    for label in range(N_CLASSES):
        share = (held_out.targets == label).sum() / (labels == label).sum()
        assert abs(share.item() - 0.25) < 0.01
    assert len(torch.unique(train.targets[:64])) == N_CLASSES  # shuffled: batches mix classes


def test_trivial_baseline_is_about_one_in_ten_and_ln_10(split):
    accuracy, cross_entropy = trivial_baseline(*split)
    assert 0.09 < accuracy < 0.11
    assert cross_entropy == pytest.approx(math.log(10), abs=0.01)
    assert cross_entropy <= math.log(10) + 1e-3  # class frequencies never lose to uniform much


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 2])
def test_bad_held_out_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="held_out"):
        digit_sequences(bad)


def test_bad_held_out_type_is_refused():
    with pytest.raises(TypeError, match="held_out"):
        digit_sequences("0.25")


def test_clipped_momentum_sgd_learns_the_digits_beyond_the_baseline(split):
    """The notebook's claim in small: a clipped tanh RNN beats the trivial baseline held out."""
    train, held_out = split
    history = train_many(
        train,
        [0.05],
        ["norm"],
        [1.0],
        steps=150,
        hidden_size=16,
        batch_size=32,
        momentum=0.9,
        eval_task=held_out,
        eval_every=50,
    )
    accuracy, _ = trivial_baseline(train, held_out)
    assert history.eval_accuracy[0, -1] > 2 * accuracy
