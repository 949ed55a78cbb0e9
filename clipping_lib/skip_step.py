r"""Skip-step: drop an update whose loss or gradient norm is an outlier of the recent run.

The rule of OLMo-core's ``SkipStepOptimizer`` (allenai/OLMo-core,
``src/olmo_core/optim/skip_step_optimizer.py``, read at commit
``a14de852ba73e34bff26d6955805e3d11325f08b``, its ``get_step_factor``). It keeps the
last :math:`w` = ``window`` losses and gradient norms *before* this step (OLMo-core keeps
``rolling_interval_length + 1`` values, this step's included) and proceeds only when

.. math::  x_t - \operatorname{mean}(x_{t-w..t-1}) \le \sigma\,
           \operatorname{std}(x_{t-w..t-1})
           \quad\text{for the loss and for the gradient norm,}

with the sample standard deviation (``torch.std_mean``); otherwise it skips. The rule is
**one-sided**: an unusually *low* loss or norm never skips, and a value equal to the mean
of a constant history (standard deviation 0) proceeds, since :math:`0 \le 0`. Every
step's values enter the history, skipped or not, so a spike widens the standard
deviation for the next ``window`` steps. OLMo-core's defaults are ``window=128`` and
``sigma=6``; it decides once it holds :math:`\max(20, \lfloor w/2\rfloor)` values, this
step's included (``min_history`` here, counted the same way).
A skipped step leaves the parameters *and* Adam's moments untouched (OLMo-core multiplies
the whole update, moment updates included, by a 0/1 step factor, so the decision costs no
host sync).

Where this implementation departs from that source, and why:

* **Non-finite values are masked out of the history.** In OLMo-core a NaN loss enters
  the rolling window, makes its mean NaN, and every comparison false: one NaN skips the
  next ``window`` steps. Here a NaN or inf loss or norm occupies its step of the window
  as a gap, the mean and standard deviation are taken over the finite values, and
  ``min_history`` counts finite values. A step whose own loss or norm is non-finite is
  always skipped (also before the history is long enough, where OLMo-core would step).
* **A short window works.** OLMo-core holds at most :math:`w + 1` values, so for
  :math:`w < 19` its threshold of 20 is never reached and nothing is ever skipped. Here
  the default is :math:`\min(\max(20, \lfloor w/2\rfloor), w + 1)`, the same as
  OLMo-core's for :math:`w \ge 19`, and a ``min_history`` above :math:`w + 1` (a count
  that the window can never hold) is refused.

:class:`SkipStep` decides; it does not step. With ``torch.optim`` write
``if not skip: optimizer.step()`` (one host sync per step), or pass the decision as a
0/1 factor to an optimizer that takes one. Its state (two rings of ``window`` values and
a step count) lives on the loss's device; ``state_dict()`` holds it for a checkpoint.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_positive

__all__ = ["SkipStep", "olmo_skip_decision"]


def _finite_std_mean(values: Tensor) -> tuple[Tensor, Tensor]:
    """The sample standard deviation and the mean over the last dimension's finite values
    (NaN where fewer than two, or none, are finite)."""
    finite = torch.isfinite(values)
    count = finite.sum(dim=-1)
    mean = torch.where(finite, values, 0.0).sum(dim=-1) / count
    squares = torch.where(finite, (values - mean.unsqueeze(-1)) ** 2, 0.0).sum(dim=-1)
    return (squares / (count - 1)).sqrt(), mean


def olmo_skip_decision(
    losses: Tensor, norms: Tensor, loss: Tensor, norm: Tensor, sigma: float
) -> Tensor:
    r"""``True`` where the step is to be skipped: the loss or the norm lies more than
    ``sigma`` sample standard deviations *above* the mean of its history, or is not finite.

    Histories are ``(..., w)``, current values ``(...)``; non-finite history entries are
    left out of the mean and the standard deviation (a history with fewer than two finite
    values gives NaN statistics, and the step is skipped). OLMo-core's comparison
    :math:`x_t - \mu \le \sigma s` decides whether to proceed, so a NaN z-score skips.
    """
    loss_std, loss_mean = _finite_std_mean(losses)
    norm_std, norm_mean = _finite_std_mean(norms)
    proceed = (loss - loss_mean <= sigma * loss_std) & (norm - norm_mean <= sigma * norm_std)
    return ~(proceed & torch.isfinite(loss) & torch.isfinite(norm))


def _as_value(value: object, name: str) -> Tensor:
    """A detached 0-d floating tensor from a one-element tensor or a real number."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(value.shape)}")
        value = value.detach().reshape(())
        return value if value.is_floating_point() else value.float()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Tensor or a real number, got {type(value).__name__}")
    return torch.tensor(float(value))


class SkipStep:
    r"""Decide, step by step, whether to skip the update (OLMo-core's rule, above).

    ``window`` (>= 2) values of the loss and of the gradient norm are kept; no step is
    skipped for an outlier before ``min_history`` finite values of each are held, this
    step's included (default :math:`\min(\max(20, \lfloor w/2\rfloor), w + 1)`,
    OLMo-core's point; at least 3, at most ``window + 1``). ``sigma`` > 0 is the number of
    standard deviations.
    """

    def __init__(self, window: int = 128, sigma: float = 6.0, min_history: int | None = None):
        self.window = check_int(window, "window", 2)
        self.sigma = check_positive(sigma, "sigma")
        if min_history is None:
            self.min_history = min(max(20, self.window // 2), self.window + 1)
        else:
            self.min_history = check_int(min_history, "min_history", 3)
            if self.min_history > self.window + 1:
                raise ValueError(
                    f"min_history must be <= window + 1 ({self.window + 1}), got {min_history}: "
                    f"{self.window} values and this step's are all a SkipStep holds"
                )
        self._losses = torch.full((self.window,), math.nan)
        self._norms = torch.full((self.window,), math.nan)
        self._steps = torch.zeros((), dtype=torch.long)

    @property
    def steps(self) -> int:
        """The number of steps decided so far."""
        return int(self._steps)

    def _follow(self, device: torch.device, dtype: torch.dtype) -> None:
        if self._losses.device != device or self._losses.dtype != dtype:
            self._losses = self._losses.to(device, dtype)
            self._norms = self._norms.to(device, dtype)
            self._steps = self._steps.to(device)

    def __call__(self, loss: Tensor | float, norm: Tensor | float) -> Tensor:
        """Record this step's loss and norm; return a 0-d bool tensor on the loss's device
        (the CPU for a Python number): skip this step? No host sync."""
        device = loss.device if isinstance(loss, Tensor) else self._losses.device
        loss, norm = _as_value(loss, "loss"), _as_value(norm, "norm")
        wide = torch.float64 in (loss.dtype, norm.dtype)
        self._follow(device, torch.float64 if wide else torch.float32)
        loss = loss.to(device, self._losses.dtype)
        norm = norm.to(device, self._losses.dtype)
        held = torch.minimum(torch.isfinite(self._losses).sum(), torch.isfinite(self._norms).sum())
        outlier = olmo_skip_decision(self._losses, self._norms, loss, norm, self.sigma)
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        skip = ~finite | ((held + 1 >= self.min_history) & outlier)
        slot = torch.remainder(self._steps, self.window).view(1)
        self._losses.scatter_(0, slot, torch.where(torch.isfinite(loss), loss, math.nan).view(1))
        self._norms.scatter_(0, slot, torch.where(torch.isfinite(norm), norm, math.nan).view(1))
        self._steps.add_(1)
        return skip

    def state_dict(self) -> dict[str, object]:
        """The step count and both rings (tensors, NaN for gaps): all a resumed run needs."""
        return {
            "steps": self.steps,
            "window": self.window,
            "losses": self._losses.clone(),
            "norms": self._norms.clone(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`'s output; the window must be the same."""
        if not isinstance(state, Mapping):
            kind = type(state).__name__
            raise TypeError(f"state must be a dict from SkipStep.state_dict(), got {kind}")
        missing = {"steps", "window", "losses", "norms"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}: not a SkipStep state_dict")
        if state["window"] != self.window:
            raise ValueError(
                f"the state was saved with window={state['window']}, this SkipStep has "
                f"window={self.window}"
            )
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"state['steps'] must be an int >= 0, got {steps!r}")
        for key in ("losses", "norms"):
            ring = state[key]
            if not isinstance(ring, Tensor) or ring.shape != (self.window,):
                raise ValueError(f"state[{key!r}] must be a Tensor of shape ({self.window},)")
        losses = state["losses"].detach().clone()
        self._losses, self._norms = losses, state["norms"].detach().clone().to(losses)
        self._steps = torch.tensor(int(steps), device=losses.device)

    def __repr__(self) -> str:
        return (
            f"SkipStep(window={self.window}, sigma={self.sigma:g}, "
            f"min_history={self.min_history})"
        )
