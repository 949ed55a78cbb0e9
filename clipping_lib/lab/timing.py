"""Fair timing of small functions: interleaved rounds, fresh inputs, medians.

Timing one function after another lets the machine's state (caches, clock speed, other
processes) drift between them. :func:`compare` runs one call of every candidate per
round, in a rotating order, on inputs made fresh by ``setup`` each time, and reports
the seconds of every call so medians and ratios come from the same conditions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(
    candidates: Mapping[str, Callable[[Any], object]],
    setup: Callable[[], Any],
    *,
    rounds: int = 20,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Seconds per call of each ``candidates[name](setup())``, interleaved over ``rounds``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(candidates)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            inputs = setup()
            _synchronize()
            start = time.perf_counter()
            candidates[name](inputs)
            _synchronize()
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def medians(seconds: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each candidate's timings."""
    return {name: statistics.median(values) for name, values in seconds.items()}
