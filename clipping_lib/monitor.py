r"""Recording and reviewing clipping: norms, thresholds and clip events, step by step.

A :class:`ClipMonitor` wraps any :class:`~clipping_lib.strategies.Clipper` and records
the :class:`~clipping_lib.strategies.ClipStep` of every call into preallocated buffers on
the device (9 bytes per step), so recording costs no host sync and a constant time per
step at any run length; :meth:`ClipMonitor.history` turns the whole run into NumPy arrays
at once (one transfer per quantity).

A :class:`NormHistory` answers the questions worth asking of a run:

* **clip rate**: the fraction of steps that were clipped. Clipping every step means the
  threshold acts as a smaller learning rate; never clipping means it protects nothing.
* **norm percentiles**: the distribution a threshold is chosen from. A threshold at the
  q-th percentile of measured norms clips about (100 - q) % of steps, if the
  distribution does not move.
* **spikes**: steps whose norm exceeds ``factor`` times the median of the preceding
  ``window`` norms, a robust baseline that a single spike does not move.

Only measurements count. A step without gradients is recorded with a NaN norm
(``ClipStep.has_grads`` is false), an overflow with a NaN or inf one; neither enters a
statistic: the clip rate, the percentiles, the maximum and the spike baselines are taken
over the steps with a finite norm, so one AMP overflow does not turn a whole run's
percentiles into NaN. Such steps keep their place in the arrays (step ``t`` is
``norm[t]``), so the history lines up with the loss curve.

Under ``torch.compile``, :meth:`ClipMonitor.record` runs eagerly (through
``torch.compiler.disable``): it keeps a Python step count and grows its buffers, which
traced code would turn into a guard per step. A compiled step that calls a monitor
compiles once, with a graph break at the record, so it cannot be compiled with
``fullgraph=True``; there, compile the clipper alone and call ``monitor.record(step)``
outside the compiled function.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clipping_lib._checks import check_int
from clipping_lib.clip import TensorOrTensors
from clipping_lib.strategies import Clipper, ClipStep

__all__ = ["ClipMonitor", "NormHistory"]


@dataclass(frozen=True)
class NormHistory:
    """One run: global norm before clipping, threshold and clip flag per step (NumPy)."""

    norm: np.ndarray
    threshold: np.ndarray
    clipped: np.ndarray

    def __post_init__(self) -> None:
        lengths = {len(self.norm), len(self.threshold), len(self.clipped)}
        if len(lengths) != 1:
            raise ValueError(
                "norm, threshold and clipped must have one entry per step, got lengths "
                f"{len(self.norm)}, {len(self.threshold)}, {len(self.clipped)}"
            )

    @classmethod
    def from_steps(cls, steps: Sequence[ClipStep]) -> NormHistory:
        """Stack a sequence of :class:`ClipStep` (one host transfer per field)."""
        if not steps:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))

        def stacked(name: str) -> np.ndarray:
            return torch.stack([getattr(s, name) for s in steps]).detach().cpu().numpy()

        return cls(
            stacked("total_norm").astype(np.float64),
            stacked("threshold").astype(np.float64),
            stacked("clipped").astype(bool),
        )

    def __len__(self) -> int:
        return len(self.norm)

    @property
    def measured(self) -> np.ndarray:
        """A bool per step: is its norm finite (a measurement that enters the statistics)?"""
        return np.isfinite(self.norm)

    @property
    def clip_rate(self) -> float:
        """The fraction of measured steps that were clipped (0 when there is none)."""
        measured = self.measured
        return float(np.mean(self.clipped[measured])) if measured.any() else 0.0

    def percentiles(self, q: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
        """Percentiles of the finite norms (linear interpolation, as ``numpy.percentile``);
        steps without gradients and non-finite steps are left out."""
        q = [float(x) for x in q]
        if any(not 0 <= x <= 100 for x in q):
            raise ValueError(f"q must be percentiles in [0, 100], got {q}")
        if not len(self):
            raise ValueError("the history is empty: record some steps first")
        finite = self.norm[self.measured]
        if not len(finite):
            raise ValueError("no step of the history has a finite norm to take percentiles of")
        return dict(zip(q, np.percentile(finite, q).tolist(), strict=True))

    def spikes(self, factor: float = 5.0, window: int = 20) -> np.ndarray:
        r"""Indices of steps with :math:`n_t > \text{factor}\cdot
        \operatorname{median}(n_{t-w}, \dots, n_{t-1})`.

        Fewer than ``window`` steps precede the first few steps; their baseline is the
        median of those there are, and step 0 has none (never a spike). Only finite norms
        are spikes or enter a baseline (a window of non-finite steps has none).
        """
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 0:
            raise ValueError(f"factor must be a number > 0, got {factor!r}")
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if len(self) < 2:
            return np.zeros(0, dtype=np.int64)
        norm = np.where(self.measured, self.norm, np.nan)
        padded = np.concatenate([np.full(window, np.nan), norm[:-1]])
        windows = np.lib.stride_tricks.sliding_window_view(padded, window)  # row t: the w before t
        baseline = np.full(len(self), np.nan)
        with warnings.catch_warnings():  # an all-NaN window has no baseline: NaN, no spike
            warnings.simplefilter("ignore", RuntimeWarning)
            baseline[1:] = np.nanmedian(windows[1:], axis=1)
        return np.flatnonzero(norm > factor * baseline)

    def summary(self) -> dict[str, float]:
        """Steps (all of them), clip rate, median/90th/99th percentile and max of the finite
        norms (NaN when there is none), spike count."""
        finite = self.norm[self.measured]
        if len(finite):
            p50, p90, p99 = self.percentiles((50, 90, 99)).values()
        else:
            p50 = p90 = p99 = float("nan")
        return {
            "steps": len(self),
            "clip_rate": self.clip_rate,
            "norm_p50": p50,
            "norm_p90": p90,
            "norm_p99": p99,
            "norm_max": float(np.max(finite)) if len(finite) else float("nan"),
            "spikes": len(self.spikes()),
        }


class ClipMonitor:
    """A :class:`Clipper` that calls ``clipper`` and records what each call did.

    Use it wherever the clipper would go (``monitor(model.parameters())``); read the run
    with :meth:`history`. :meth:`record` adds a step clipped elsewhere.

    The record is three preallocated buffers on the first step's device (norm and
    threshold in the norm's dtype, at least float32; the clip flag as bool), grown by
    doubling: 9 bytes per step in float32 (at most twice that allocated), 9 MB per
    million steps, and a constant per-step cost (one indexed copy per buffer, no host
    sync). ``state_dict()`` holds the record and the wrapped clipper's state, so a resumed
    run continues both.
    """

    def __init__(self, clipper: Clipper, *, capacity: int = 1024) -> None:
        if not callable(clipper):
            raise TypeError(f"clipper must be callable (a Clipper), got {type(clipper).__name__}")
        self.clipper = clipper
        self._capacity = check_int(capacity, "capacity", 1)
        self._norm = self._threshold = self._clipped = None
        self._count = 0

    def __call__(self, parameters: TensorOrTensors) -> ClipStep:
        return self.record(self.clipper(parameters))

    def _allocate(self, like: Tensor, capacity: int) -> None:
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        new = [
            torch.empty(capacity, dtype=dtype, device=like.device),
            torch.empty(capacity, dtype=dtype, device=like.device),
            torch.empty(capacity, dtype=torch.bool, device=like.device),
        ]
        if self._norm is not None:
            for buffer, old in zip(new, self.buffers(), strict=True):
                buffer[: self._count] = old[: self._count]
        self._norm, self._threshold, self._clipped = new

    def buffers(self) -> tuple[Tensor, Tensor, Tensor]:
        """The recorded norms, thresholds and clip flags (views, one entry per step)."""
        if self._norm is None:
            empty = torch.zeros(0)
            return empty, empty, torch.zeros(0, dtype=torch.bool)
        n = self._count
        return self._norm[:n], self._threshold[:n], self._clipped[:n]

    def record(self, step: ClipStep) -> ClipStep:
        """Keep ``step`` (copied into the buffers on the device: no host sync) and return it.

        A step without gradients (``has_grads`` false) is kept with its NaN norm, so step
        ``t`` of the run stays entry ``t``; :class:`NormHistory` leaves it out of every
        statistic. Runs eagerly under ``torch.compile`` (see the module's docstring).
        """
        if torch.compiler.is_compiling():  # a graph break: dynamo is imported only here
            return torch.compiler.disable(ClipMonitor._record)(self, step)
        return self._record(step)

    def _record(self, step: ClipStep) -> ClipStep:
        if not isinstance(step, ClipStep):
            raise TypeError(f"step must be a ClipStep, got {type(step).__name__}")
        if self._norm is None:
            self._allocate(step.total_norm, self._capacity)
        elif self._count == len(self._norm):
            self._allocate(self._norm, 2 * len(self._norm))
        i = self._count
        self._norm[i] = step.total_norm
        self._threshold[i] = step.threshold
        self._clipped[i] = step.clipped
        self._count += 1
        return step

    @property
    def steps(self) -> list[ClipStep]:
        """The recorded steps as :class:`ClipStep` objects (views into the buffers); the
        buffers do not keep ``has_grads``: a step without gradients reads back with a NaN
        norm and ``has_grads=True``."""
        norm, threshold, clipped = self.buffers()
        return [ClipStep(norm[i], threshold[i], clipped[i]) for i in range(self._count)]

    def history(self) -> NormHistory:
        """Everything recorded so far, as NumPy arrays (one host transfer per quantity)."""
        norm, threshold, clipped = (b.detach().cpu().numpy() for b in self.buffers())
        return NormHistory(norm.astype(np.float64), threshold.astype(np.float64), clipped)

    def state_dict(self) -> dict[str, object]:
        """The record (tensors) and, if the clipper has one, the clipper's ``state_dict``."""
        norm, threshold, clipped = (b.clone() for b in self.buffers())
        state = {"norm": norm, "threshold": threshold, "clipped": clipped}
        if hasattr(self.clipper, "state_dict"):
            state["clipper"] = self.clipper.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`'s output (the clipper's state too, if it was saved)."""
        if not isinstance(state, Mapping) or not {"norm", "threshold", "clipped"} <= set(state):
            raise ValueError("state must be a dict from ClipMonitor.state_dict()")
        norm, threshold, clipped = state["norm"], state["threshold"], state["clipped"]
        if not all(isinstance(t, Tensor) and t.ndim == 1 for t in (norm, threshold, clipped)):
            raise TypeError("state['norm'], ['threshold'] and ['clipped'] must be 1-d Tensors")
        if not len(norm) == len(threshold) == len(clipped):
            raise ValueError("state['norm'], ['threshold'] and ['clipped'] differ in length")
        if "clipper" in state:
            if not hasattr(self.clipper, "load_state_dict"):
                raise TypeError(f"{self.clipper!r} has no load_state_dict for state['clipper']")
            self.clipper.load_state_dict(state["clipper"])
        self._norm = self._threshold = self._clipped = None
        self._count = 0
        if len(norm):
            self._allocate(norm, max(self._capacity, len(norm)))
            self._count = len(norm)
            self._norm[: self._count] = norm
            self._threshold[: self._count] = threshold
            self._clipped[: self._count] = clipped.bool()

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ClipMonitor({self.clipper!r}, steps={len(self)})"

