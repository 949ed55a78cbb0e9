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

__all__ = [
    "ClipMonitor",
    "LayerHistory",
    "LayerMonitor",
    "NormHistory",
    "SpikeOrigin",
    "module_of",
    "read_layer_log",
]


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


@dataclass(frozen=True)
class SpikeOrigin:
    """Where a spike starts: the first step at which some layer's value exceeds ``factor``
    times its own baseline, that layer (the largest ratio at that step), and the ratio."""

    step: int
    layer: str
    ratio: float


@dataclass(frozen=True)
class LayerHistory:
    """One run, per step and per layer (NumPy, ``(steps, layers)``): the gradient norm
    and the update-to-weight ratio :math:`\\lVert\\Delta\\theta\\rVert/\\lVert\\theta\\rVert`."""

    layers: tuple[str, ...]
    grad_norm: np.ndarray
    update_ratio: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.grad_norm), len(self.layers))
        if self.grad_norm.shape != shape or self.update_ratio.shape != shape:
            raise ValueError(
                f"grad_norm and update_ratio must have shape (steps, {len(self.layers)} layers), "
                f"got {self.grad_norm.shape} and {self.update_ratio.shape}"
            )

    def __len__(self) -> int:
        return len(self.grad_norm)

    def baseline(self, quantity: str = "grad_norm", window: int = 20) -> np.ndarray:
        """Per step and layer, the median of that layer's ``window`` preceding values (NaN
        at step 0, fewer values before step ``window``): the robust baseline of
        :meth:`NormHistory.spikes`, per layer. NaN values (steps not recorded) are skipped."""
        values = self._quantity(quantity)
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        padded = np.concatenate([np.full((window, values.shape[1]), np.nan), values[:-1]])
        windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
        base = np.full(values.shape, np.nan)
        if len(values) > 1:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window: NaN
                base[1:] = np.nanmedian(windows[1:], axis=-1)
        return base

    def spike_origin(
        self, factor: float = 5.0, window: int = 20, quantity: str = "grad_norm", skip: int = 0
    ) -> SpikeOrigin | None:
        r"""The first step at which some layer has :math:`x_t > \text{factor}\cdot
        \operatorname{median}(x_{t-w}, \dots, x_{t-1})` (its own baseline), and the layer
        with the largest ratio at that step; ``None`` if no layer ever does. The first
        ``skip`` steps (a warm-up, when every norm moves fast) are not searched.

        A spike that starts in one layer reaches the others a step or more later (through
        the update, or the next forward pass), so the first layer to cross its own
        baseline is where to look; the global norm only says *that* something spiked.
        """
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 0:
            raise ValueError(f"factor must be a number > 0, got {factor!r}")
        if isinstance(skip, bool) or not isinstance(skip, numbers.Integral) or skip < 0:
            raise ValueError(f"skip must be an int >= 0, got {skip!r}")
        values = self._quantity(quantity)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = values / self.baseline(quantity, window)
        ratio[:skip] = np.nan
        hits = np.flatnonzero(np.nan_to_num(ratio, nan=0.0).max(axis=1) > factor)
        if not len(hits):
            return None
        step = int(hits[0])
        layer = int(np.nanargmax(np.nan_to_num(ratio[step], nan=-np.inf)))
        return SpikeOrigin(step, self.layers[layer], float(ratio[step, layer]))

    def _quantity(self, quantity: str) -> np.ndarray:
        if quantity not in ("grad_norm", "update_ratio"):
            raise ValueError(f"quantity must be 'grad_norm' or 'update_ratio', got {quantity!r}")
        return getattr(self, quantity)

    def to_jsonl(self, path: str) -> None:
        """Write one JSON line per step: ``{"step": t, "grad_norm/<layer>": ...,
        "update_ratio/<layer>": ...}``, the flat key/value form loggers write."""
        import json

        with open(path, "w", encoding="utf-8") as file:
            for t in range(len(self)):
                row: dict[str, float] = {"step": t}
                for j, name in enumerate(self.layers):
                    row[f"grad_norm/{name}"] = float(self.grad_norm[t, j])
                    row[f"update_ratio/{name}"] = float(self.update_ratio[t, j])
                file.write(json.dumps(row) + "\n")


def read_layer_log(path: str) -> LayerHistory:
    """Read a run's log: JSON lines with a ``"step"`` and keys ``"grad_norm/<layer>"``
    (and optionally ``"update_ratio/<layer>"``), as :meth:`LayerHistory.to_jsonl` or a
    logger writes them. Other keys are ignored; a step missing a layer's value, or
    missing entirely, reads as NaN (the detector skips NaN); lines that are not JSON
    objects with a ``"step"`` raise a ``ValueError`` naming the line."""
    import json

    rows: dict[int, dict] = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, TypeError, KeyError) as error:
                message = f"{path}, line {number}: not a JSON object with a 'step'"
                raise ValueError(message) from error
            rows[step] = row
    layers = tuple(dict.fromkeys(
        key.split("/", 1)[1] for row in rows.values() for key in row if key.startswith("grad_norm/")
    ))  # fmt: skip
    if not layers:
        raise ValueError(f"{path} has no 'grad_norm/<layer>' values")
    steps = max(rows) + 1
    grad_norm = np.full((steps, len(layers)), np.nan)
    update_ratio = np.full((steps, len(layers)), np.nan)
    for step, row in rows.items():
        for j, name in enumerate(layers):
            grad_norm[step, j] = row.get(f"grad_norm/{name}", np.nan)
            update_ratio[step, j] = row.get(f"update_ratio/{name}", np.nan)
    return LayerHistory(layers, grad_norm, update_ratio)


def module_of(name: str) -> str:
    """The default layer of a parameter: its module's path (``"blocks.0.attn.qkv"`` for
    ``"blocks.0.attn.qkv.weight"``), so a weight and its bias form one layer."""
    return name.rsplit(".", 1)[0] if "." in name else name


class LayerMonitor:
    """Per-layer gradient norms and update-to-weight ratios, recorded with no host sync.

    Args:
        named_parameters: ``model.named_parameters()`` (any iterable of name, tensor pairs).
        layer: maps a parameter's name to its layer's name (default :func:`module_of`);
            the norm of a layer is the 2-norm over all its parameters' gradients.
        capacity: the steps the buffers hold before they double.

    Per step: :meth:`record_grads` after ``backward()`` (after clipping, to see what the
    optimizer receives; before, to see the raw gradient), then :meth:`snapshot` and,
    after ``optimizer.step()``, :meth:`record_update`; or :meth:`attach` an optimizer and
    all three run in its step hooks. Everything stays on the parameters' device: two
    float32 buffers ``(capacity, layers)``, so **8 bytes per layer per step** (a 12-layer
    transformer with 6 weight matrices and 6 vectors per block, about 150 layers, costs
    1.2 kB per step, 1.2 GB per million steps; read a window with :meth:`history` and
    :meth:`clear` to bound it), plus one copy of the weights for :meth:`snapshot`. The
    per-layer sums use ``torch._foreach_norm`` and one ``index_add_``: no ``.item()``.
    """

    def __init__(
        self,
        named_parameters: Mapping[str, Tensor] | Sequence[tuple[str, Tensor]],
        *,
        layer=module_of,
        capacity: int = 1024,
    ) -> None:
        pairs = list(named_parameters.items() if isinstance(named_parameters, Mapping)
                     else named_parameters)  # fmt: skip
        if not pairs:
            raise ValueError("named_parameters is empty: pass model.named_parameters()")
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Tensor)):
                raise TypeError("named_parameters must yield (name, Tensor) pairs")
        if not callable(layer):
            raise TypeError(f"layer must be callable (name -> layer name), got {layer!r}")
        self._capacity = check_int(capacity, "capacity", 1)
        self.params = [p for _, p in pairs]
        names = [str(layer(name)) for name, _ in pairs]
        self.layers = tuple(dict.fromkeys(names))
        device = self.params[0].device
        self._index = torch.tensor([self.layers.index(n) for n in names], device=device)
        self._grad = torch.full((self._capacity, len(self.layers)), float("nan"), device=device)
        self._ratio = torch.full_like(self._grad, float("nan"))
        self._before: list[Tensor] | None = None
        self._count = 0  # steps whose gradients were recorded

    @property
    def bytes_per_step(self) -> int:
        """The record's size per step: two float32 numbers per layer."""
        return 2 * 4 * len(self.layers)

    def _per_layer(self, tensors: Sequence[Tensor]) -> Tensor:
        norms = torch.stack(torch._foreach_norm([t.float() for t in tensors]))
        sums = torch.zeros(len(self.layers), device=norms.device)
        return sums.index_add_(0, self._index, norms.pow(2)).sqrt()

    def _row(self) -> int:
        if self._count == len(self._grad):
            grow = torch.full_like(self._grad, float("nan"))
            self._grad, self._ratio = torch.cat([self._grad, grow]), torch.cat([self._ratio, grow])
        return self._count

    @torch.no_grad()
    def record_grads(self) -> None:
        """Record each layer's gradient norm now (a missing gradient counts as zero)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        row = self._row()
        self._grad[row] = self._per_layer(grads)
        self._count += 1

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the weights (call just before ``optimizer.step()``)."""
        if self._before is None:
            self._before = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self._before, [p.detach() for p in self.params])

    @torch.no_grad()
    def record_update(self, before: Sequence[Tensor] | None = None) -> None:
        r"""Record :math:`\lVert\theta_{t+1}-\theta_t\rVert/\lVert\theta_t\rVert` per layer
        for the step whose gradients were recorded last, against ``before`` or the
        :meth:`snapshot`."""
        before = self._before if before is None else list(before)
        if before is None or self._count == 0:
            raise RuntimeError("call record_grads() and snapshot() before record_update()")
        deltas = torch._foreach_sub([p.detach() for p in self.params], before)
        ratio = self._per_layer(deltas) / self._per_layer(before).clamp(min=1e-30)
        self._ratio[self._count - 1] = ratio

    def attach(self, optimizer: torch.optim.Optimizer):
        """Record through ``optimizer``'s step hooks: gradients and a snapshot before each
        step, the update after it. Returns the two hook handles (``.remove()`` them)."""

        def before_step(*_) -> None:
            self.record_grads()
            self.snapshot()

        def after_step(*_) -> None:
            self.record_update()

        return optimizer.register_step_pre_hook(before_step), optimizer.register_step_post_hook(
            after_step
        )

    def history(self) -> LayerHistory:
        """Everything recorded so far as NumPy (one transfer per quantity)."""
        n = self._count
        return LayerHistory(
            self.layers,
            self._grad[:n].double().cpu().numpy(),
            self._ratio[:n].double().cpu().numpy(),
        )

    def clear(self) -> None:
        """Forget the recorded steps (keep the buffers)."""
        self._grad.fill_(float("nan"))
        self._ratio.fill_(float("nan"))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"LayerMonitor({len(self.layers)} layers, steps={len(self)})"
