r"""Learning-rate schedules: linear warm-up, then cosine decay (the GPT recipe).

:math:`\eta_t = \eta\,\frac{t+1}{W}` for :math:`t < W`, then
:math:`\eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})(1 + \cos(\pi\,\frac{t - W}{T - W}))`
for :math:`W \le t < T`. :func:`warmup_cosine` returns the multiplier
:math:`\eta_t/\eta`, the form ``torch.optim.lr_scheduler.LambdaLR`` takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from clipping_lib._checks import check_int

__all__ = ["warmup_cosine"]


def warmup_cosine(
    total_steps: int, warmup_steps: int, min_ratio: float = 0.1
) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at step ``t`` (0-based), for ``LambdaLR``."""
    total_steps = check_int(total_steps, "total_steps", 1)
    warmup_steps = check_int(warmup_steps, "warmup_steps", 0)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * progress))

    return multiplier
