r"""Exercises of notebook 12 (when the norm spikes): references and diagnosing checks.

* :data:`ex1` -- Adafactor's update clipping of one tensor, :math:`u/\max(1,
  \mathrm{RMS}(u)/d)`: a bound on the *update*, which gradient clipping is not.
* :data:`ex2` -- the size of Adam's update after its moments have collapsed, per
  coordinate and in units of the learning rate: :math:`(1-\beta_1)/\sqrt{1-\beta_2}`.
* :data:`ex3` -- per-layer gradient norms as one tensor, with no host sync (the core of
  :class:`clipping_lib.monitor.LayerMonitor`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clipping_lib.lab.exercises._core import Exercise, tensor_mismatch
from clipping_lib.lab.spike_mechanisms import collapse_bound, update_rms_clip
from clipping_lib.lab.syncs import CountHostSyncs
from clipping_lib.monitor import module_of

__all__ = ["ex1", "ex2", "ex3", "layer_grad_norms", "update_clip"]


# ------------------------------------------------------------- Exercise 1 · update clipping
def update_clip(u: Tensor, d: float = 1.0) -> Tensor:
    """Adafactor's update clipping: ``u`` divided by ``max(1, RMS(u) / d)``, a new tensor."""
    return update_rms_clip(u, d)


def _ex1_cases() -> list[tuple[Tensor, float]]:
    g = torch.Generator().manual_seed(12)
    big = torch.randn(40, 30, generator=g, dtype=torch.float64) * 5.0  # RMS about 5
    small = torch.randn(7, generator=g, dtype=torch.float64) * 0.1  # RMS about 0.1
    return [(big, 1.0), (big, 2.0), (small, 1.0)]


def _ex1_in_place(answer, reference) -> str | None:
    u, d = _ex1_cases()[0]
    original = u.clone()
    answer(u, d)
    if not torch.equal(u, original):
        return "your function changed `u` in place: return a new tensor and leave the input as is."
    return None


def _ex1_small_untouched(answer, reference) -> str | None:
    u, d = _ex1_cases()[2]
    got = answer(u.clone(), d)
    if isinstance(got, Tensor) and not torch.allclose(got, u, rtol=1e-12, atol=0):
        return (
            "an update whose RMS is already below d must come back unchanged: divide by "
            "max(1, RMS(u) / d), never by RMS(u) / d alone (that would scale small updates up)."
        )
    return None


def _ex1_rms_not_norm(answer, reference) -> str | None:
    for u, d in _ex1_cases()[:2]:
        got, expected = answer(u.clone(), d), reference(u, d)
        if not isinstance(got, Tensor):
            return f"return a tensor, not a {type(got).__name__}."
        rms = got.pow(2).mean().sqrt().item()
        if math.isclose(got.norm().item(), d, rel_tol=1e-6):
            return (
                "you clipped the norm to d; Adafactor clips the RMS, sqrt(mean(u**2)), which "
                f"is the norm divided by sqrt(numel) = {math.sqrt(u.numel()):.1f} here."
            )
        if not math.isclose(rms, d, rel_tol=1e-6):
            return f"after clipping, the RMS should be d = {d:g}; yours is {rms:.4g}."
        message = tensor_mismatch(got, expected, "the clipped update", rtol=1e-10, atol=0)
        if message:
            return message
    return None


ex1 = Exercise(
    "Exercise 1 · update clipping",
    update_clip,
    [_ex1_in_place, _ex1_small_untouched, _ex1_rms_not_norm],
    verified="the RMS of a large update is brought to d, a small one is untouched, the "
    "input is left as it was",
    hints=[
        "RMS(u) is `u.pow(2).mean().sqrt()`: the norm divided by sqrt(u.numel()).",
        "Divide by `torch.clamp(rms / d, min=1.0)`: at least 1, so small updates pass.",
    ],
)


# ------------------------------------------------------------ Exercise 2 · the collapse bound
EX2_BETAS = (0.9, 0.999)
ex2_reference = collapse_bound(*EX2_BETAS)


def _ex2_number(answer, reference) -> str | None:
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return f"`answer` should be a number, got {type(answer).__name__}."
    if math.isclose(value, reference, rel_tol=1e-3):
        return None
    b1, b2 = EX2_BETAS
    mistakes = {
        (1 - b1) / (1 - b2): "you divided by 1 - β2; v holds squares: divide by its square root.",
        1 / math.sqrt(1 - b2): "m also starts from zero: only (1 - β1) g of the new gradient "
        "enters it, so multiply by 1 - β1.",
        collapse_bound(b1, 0.95): "that is the value for β2 = 0.95; this exercise uses the "
        "PyTorch default β2 = 0.999.",
        1.0: "with both moments fed by one gradient, m/sqrt(v) is not 1: m gets weight 1 - β1, "
        "v gets weight 1 - β2.",
    }
    for wrong, message in mistakes.items():
        if math.isclose(value, wrong, rel_tol=1e-3):
            return message
    return f"{value:.4g} is not it; write m and v after one step from zero, then m / sqrt(v)."


ex2 = Exercise(
    "Exercise 2 · the size of a collapsed update",
    ex2_reference,
    [_ex2_number],
    verified=f"(1 - β1)/√(1 - β2) = {ex2_reference:.3f} learning rates per coordinate, "
    "whatever the size of the gradient",
    hints=[
        "After the quiet stretch m ≈ 0 and v ≈ 0. One step: m = (1 - β1) g, v = (1 - β2) g².",
        "Long after step 1 the bias corrections are 1; the update is m / sqrt(v).",
    ],
)


# ---------------------------------------------------------- Exercise 3 · per-layer norms
def layer_grad_norms(model: nn.Module) -> Tensor:
    """The 2-norm of each layer's gradients (layers in order of first appearance, a layer
    being a parameter's module path, :func:`clipping_lib.monitor.module_of`), one tensor."""
    names = [module_of(name) for name, _ in model.named_parameters()]
    layers = list(dict.fromkeys(names))
    index = torch.tensor([layers.index(n) for n in names])
    norms = torch.stack([p.grad.norm() for p in model.parameters()])
    return torch.zeros(len(layers), dtype=norms.dtype).index_add_(0, index, norms**2).sqrt()


def _ex3_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Linear(4, 2))
    model(torch.randn(9, 6)).pow(2).sum().backward()
    return model


def _ex3_values(answer, reference) -> str | None:
    model = _ex3_model()
    got, expected = answer(model), reference(model)
    if not isinstance(got, Tensor):
        return f"return one tensor (one norm per layer), not a {type(got).__name__}."
    params = len(list(model.parameters()))
    if got.shape == (params,):
        return (
            f"you returned one norm per parameter ({params}); a layer's weight and bias belong "
            f"together: {len(expected)} layers. Sum their squares by layer, then take the root."
        )
    if got.numel() == 1:
        return "that is the global norm; return one norm per layer."
    if got.shape == expected.shape and torch.allclose(got, expected**2, rtol=1e-5):
        return "you returned the sums of squares: take the square root of each."
    return tensor_mismatch(got, expected, "the per-layer norms", rtol=1e-5, atol=1e-7)


def _ex3_no_sync(answer, reference) -> str | None:
    model = _ex3_model()
    with CountHostSyncs() as counter:
        answer(model)
    if counter.count:
        return (
            f"your function copied {counter.count} value(s) to Python (.item(), float(), "
            "tolist(), an `if` on a tensor): on a GPU each one waits for the device. Keep "
            "everything a tensor."
        )
    return None


ex3 = Exercise(
    "Exercise 3 · per-layer norms with no host sync",
    layer_grad_norms,
    [_ex3_values, _ex3_no_sync],
    verified="one norm per layer (weight and bias together), equal to the reference, no host "
    "sync counted",
    hints=[
        "Name each parameter's layer with `module_of(name)`; `dict.fromkeys` keeps the order.",
        "Stack the parameters' norms, square them, `index_add_` them by layer, take `.sqrt()`.",
    ],
)
