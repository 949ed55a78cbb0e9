"""Count host synchronisations: the calls that copy a tensor's value into Python.

``t.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (and so ``if t:``) and ``t.tolist()``
need the value on the host: on a GPU each one waits until every queued kernel has
finished. Counting them from Python (with the public ``TorchFunctionMode``) shows
whether a function keeps its decisions on the device.

Only these Python-visible conversions are counted. Operations that sync *inside* a
kernel call are not: those whose output size depends on the data (``torch.nonzero``,
boolean-mask indexing ``g[g > 0]``, ``torch.unique``) and copies to the host
(``.cpu()``). On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` warns on most of those
too (it is experimental and does not catch every synchronizing operation).
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

COPIES_TO_PYTHON = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.__bool__,
        torch.Tensor.tolist,
    }
)


class CountHostSyncs(TorchFunctionMode):
    """``with CountHostSyncs() as counter: ...`` then ``counter.count`` host syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in COPIES_TO_PYTHON:
            self.count += 1
        return func(*args, **(kwargs or {}))
