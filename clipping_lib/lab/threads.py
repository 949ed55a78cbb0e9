"""Run small, sequential tensor work on one CPU thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block (or, as a decorator, the function) on one intra-op thread, then
    restore the previous thread count.

    BPTT and small training loops are chains of tiny kernels on matrices of at most a
    few dozen rows: splitting each between threads costs more than it saves, and on a
    busy machine waiting for the other thread costs far more (measured here: up to 10x
    slower training, and 100x on single 128 x 128 mat-vecs, with two threads on a
    shared 2-core CPU).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
