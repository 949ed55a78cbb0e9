r"""Handwritten digits read one pixel at a time: real data that ships inside scikit-learn.

scikit-learn bundles the UCI optical-recognition digits (1,797 images of 8 x 8 pixels, values
0 to 16, ten classes) and :func:`sklearn.datasets.load_digits` reads them from the installed
package, with no download. Read row by row, each image becomes a sequence of
:math:`T = 64` scalar inputs, and a recurrent network must classify it from its last hidden
state: the small cousin of pixel-by-pixel MNIST (784 steps), the long-memory benchmark of
Le, Jaitly and Hinton (2015).

:func:`digit_sequences` returns a train and a held-out :class:`~clipping_lib.lab.tasks.SequenceTask`
split per class with a seeded permutation (the same split on every machine), the training
set shuffled once so that consecutive mini-batches mix the classes.
:func:`trivial_baseline` gives what a model that ignores the pixels scores on the held-out
set: always the most frequent training class (accuracy), and the training class
frequencies as its predicted probabilities (cross-entropy).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from clipping_lib.lab.tasks import SequenceTask

N_CLASSES = 10
IMAGE_SIDE = 8
SEQUENCE_LENGTH = IMAGE_SIDE * IMAGE_SIDE  # 64 steps, one pixel each
MAX_PIXEL = 16.0  # the data set's pixel values are integers 0..16


def _bundled_csv() -> Path | None:
    """The file ``load_digits`` reads inside the installed scikit-learn, if it is there."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as floats in [0, 1], ``(1797, 8, 8)``, and their labels ``(1797,)``.

    Reads the CSV that :func:`sklearn.datasets.load_digits` reads (64 pixel columns, then
    the label), straight from the installed package: importing scikit-learn costs about a
    second, reading the file a few milliseconds (the tests check both give the same data).
    Falls back to ``load_digits`` if the file has moved.
    """
    path = _bundled_csv()
    if path is not None:
        table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float32)
        pixels, labels = table[:, :SEQUENCE_LENGTH], table[:, SEQUENCE_LENGTH].astype(np.int64)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the digits ship with scikit-learn: pip install scikit-learn (requirements.txt)"
            ) from error
        digits = load_digits()
        pixels, labels = digits.data.astype(np.float32), digits.target.astype(np.int64)
    images = torch.from_numpy(pixels).reshape(-1, IMAGE_SIDE, IMAGE_SIDE) / MAX_PIXEL
    return images, torch.from_numpy(labels)


def digit_sequences(held_out: float = 0.25, *, seed: int = 0) -> tuple[SequenceTask, SequenceTask]:
    """Train and held-out tasks: pixel sequences ``(n, 64, 1)`` and class labels ``(n,)``.

    From each class, ``round(held_out * count)`` images chosen by a permutation seeded with
    ``seed`` go to the held-out set, the rest to training; the training set is then
    shuffled with the same generator. No image is in both.
    """
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise TypeError(f"held_out must be a float in (0, 1), got {type(held_out).__name__}")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out!r}")
    images, labels = load_digit_images()
    generator = torch.Generator().manual_seed(seed)
    train_index, test_index = [], []
    for label in range(N_CLASSES):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(held_out * len(members))
        test_index.append(members[:n_test])
        train_index.append(members[n_test:])
    train = torch.cat(train_index)
    train = train[torch.randperm(len(train), generator=generator)]
    test = torch.cat(test_index).sort().values
    sequences = images.reshape(len(images), SEQUENCE_LENGTH, 1)  # row by row, one pixel a step
    return (
        SequenceTask("digits_train", sequences[train], labels[train], "cross_entropy", N_CLASSES),
        SequenceTask("digits_held_out", sequences[test], labels[test], "cross_entropy", N_CLASSES),
    )


def trivial_baseline(train: SequenceTask, held_out: SequenceTask) -> tuple[float, float]:
    """Held-out (accuracy, cross-entropy) of a model that ignores its input.

    Accuracy: always answer the most frequent training class. Cross-entropy: predict the
    training class frequencies :math:`p_k`, scoring :math:`-\\frac1n\\sum_i \\ln p_{y_i}`
    (at most about :math:`\\ln 10` for balanced classes).
    """
    counts = torch.bincount(train.targets, minlength=train.output_size).double()
    frequencies = counts / counts.sum()
    accuracy = (held_out.targets == counts.argmax()).double().mean().item()
    cross_entropy = -frequencies[held_out.targets].log().mean().item()
    if not math.isfinite(cross_entropy):
        raise ValueError("held_out contains a class that never occurs in train")
    return accuracy, cross_entropy
