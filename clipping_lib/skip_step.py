r"""Skip-step: drop an update whose loss or gradient norm is an outlier of the recent run.

The rule of OLMo-core's ``SkipStepOptimizer`` (allenai/OLMo-core,
``src/olmo_core/optim/skip_step_optimizer.py``): keep the last ``window`` losses and
gradient norms before this step; once there are enough of them, skip the step when

.. math::  \frac{|x_t - \operatorname{mean}(x_{t-w..t-1})|}{\operatorname{std}(x_{t-w..t-1})}
           > \sigma \quad\text{for the loss or for the gradient norm.}

It is a z-score against the mean and the (sample) standard deviation, not a ratio to a
median, and it is two-sided (an outlying drop also skips). Every step's values enter
the history, skipped or not, so a spike widens the standard deviation for the next
``window`` steps. OLMo-core's defaults are ``window=128``, ``sigma=6``, and no decision
before ``max(20, window // 2)`` values (this step's included). A skipped step leaves the
parameters *and* Adam's moments untouched (OLMo-core multiplies the whole AdamW update,
moment updates included, by a 0/1 step factor, so the decision costs no host sync).

:class:`SkipStep` decides; it does not step. With ``torch.optim`` write
``if not skip: optimizer.step()`` (one host sync per step), or pass the decision as a
0/1 factor to an optimizer that takes one, as the course's learning-rate sweep
(``lab/sweep.py``) does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipping_lib._checks import check_int, check_positive

__all__ = ["SkipStep", "skip_decision"]


def skip_decision(
    losses: Tensor, norms: Tensor, loss: Tensor, norm: Tensor, sigma: float
) -> Tensor:
    """``True`` where the loss or the norm is more than ``sigma`` standard deviations from
    the mean of its history (histories ``(..., w)``, current values ``(...)``)."""
    loss_std, loss_mean = torch.std_mean(losses, dim=-1)
    norm_std, norm_mean = torch.std_mean(norms, dim=-1)
    loss_z = (loss - loss_mean).abs() / loss_std
    norm_z = (norm - norm_mean).abs() / norm_std
    return ~((loss_z <= sigma) & (norm_z <= sigma))  # NaN z-scores skip, as in OLMo-core


class SkipStep:
    """Decide, step by step, whether to skip the update (OLMo-core's rule, above)."""

    def __init__(self, window: int = 128, sigma: float = 6.0, min_history: int | None = None):
        self.window = check_int(window, "window", 2)
        self.sigma = check_positive(sigma, "sigma")
        self.min_history = (
            max(20, self.window // 2)
            if min_history is None
            else check_int(min_history, "min_history", 3)
        )
        self._losses: list[Tensor] = []
        self._norms: list[Tensor] = []

    def __call__(self, loss: Tensor, norm: Tensor) -> Tensor:
        """Record this step's loss and norm; return a 0-d bool tensor: skip this step?"""
        self._losses = [*self._losses, loss.detach().float()][-(self.window + 1) :]
        self._norms = [*self._norms, norm.detach().float()][-(self.window + 1) :]
        if len(self._losses) < self.min_history:
            return torch.tensor(False)
        return skip_decision(
            torch.stack(self._losses[:-1]), torch.stack(self._norms[:-1]),
            self._losses[-1], self._norms[-1], self.sigma,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"SkipStep(window={self.window}, sigma={self.sigma:g})"
