r"""Clipping written by hand, the way a learner writes it first, and the vectorised fix.

These are for teaching. :mod:`clipping_lib.clip` is the complete, tested version.

The naive norm clip asks the device for one Python float per parameter
(``.item()``): each call waits for all queued work to finish (a *host sync*) and
launches its own small kernels. The vectorised version computes every per-tensor
norm in one ``torch._foreach_norm`` call, combines them on the device, and scales
with one ``torch._foreach_mul_``: no value ever comes back to Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from clipping_lib.lab.syncs import CountHostSyncs
from clipping_lib.lab.timing import compare, medians


@torch.no_grad()
def naive_clip_grad_value_(parameters: Iterable[Tensor], clip_value: float) -> None:
    r"""Clamp each gradient element to :math:`[-c, c]`, one parameter at a time."""
    for p in parameters:
        if p.grad is not None:
            p.grad.clamp_(min=-clip_value, max=clip_value)


@torch.no_grad()
def naive_clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> float:
    r"""Global L2 clipping with a Python loop: :math:`\lVert g\rVert = \sqrt{\sum_i
    \lVert g_i\rVert^2}`, then :math:`g \leftarrow g \cdot c / (\lVert g\rVert + 10^{-6})`
    if that factor is below 1. Returns the norm before clipping, as a float.

    Costs one host sync (``.item()``) per parameter, and two small kernels (a norm, then a
    multiply when clipping) per parameter.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total_sq = 0.0
    for g in grads:
        total_sq += g.norm(2).item() ** 2  # host sync, once per tensor
    total_norm = total_sq**0.5
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:  # a Python branch: needs the number on the host
        for g in grads:
            g.mul_(clip_coef)
    return total_norm


@torch.no_grad()
def vectorized_clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    r"""Global L2 clipping with no host sync: all norms in one foreach call, the
    coefficient :math:`\min(1, c / (\lVert g\rVert + 10^{-6}))` kept on the device.
    Returns the norm before clipping, as a 0-d tensor.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    per_tensor = torch.stack(torch._foreach_norm(grads, 2.0))
    total_norm = torch.linalg.vector_norm(per_tensor, 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))
    return total_norm


# --- The bench notebook 04 runs these on (harness, kept out of the lesson) -----------------

CLIPPERS = ("naive loop", "vectorised", "torch")


def gradient_set(count: int, size: int = 32, seed: int | None = None) -> list[torch.nn.Parameter]:
    """``count`` parameters of ``size x size`` with seeded gradients of norm far above 1.

    Like the many small tensors of a deep network. Seeded by ``seed`` (default ``count``),
    so two calls with the same arguments give equal gradients.
    """
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    generator = torch.Generator().manual_seed(count if seed is None else seed)
    params = [
        torch.nn.Parameter(torch.randn(size, size, generator=generator)) for _ in range(count)
    ]
    for p in params:
        p.grad = torch.randn(size, size, generator=generator) * 10
    return params


def host_syncs(
    clip: Callable[..., object], params: list[torch.nn.Parameter], max_norm: float = 1.0
) -> int:
    """How many Python-visible host syncs ``clip(params, max_norm)`` makes (``CountHostSyncs``)."""
    with CountHostSyncs() as counter:
        clip(params, max_norm)
    return counter.count


def time_clippers(
    params: list[torch.nn.Parameter], rounds: int = 15, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of the naive loop, the vectorised version and PyTorch's
    ``clip_grad_norm_`` on ``params`` (``max_norm = 1``), interleaved by
    :func:`clipping_lib.lab.timing.compare`, each call on freshly restored gradients.
    """
    master = [p.grad.clone() for p in params]

    def restore() -> None:
        for p, m in zip(params, master, strict=True):
            p.grad.copy_(m)

    candidates = {
        "naive loop": lambda _: naive_clip_grad_norm_(params, 1.0),
        "vectorised": lambda _: vectorized_clip_grad_norm_(params, 1.0),
        "torch": lambda _: torch.nn.utils.clip_grad_norm_(params, 1.0),
    }
    return medians(compare(candidates, restore, rounds=rounds, warmup=warmup))


def plot_timings(table: dict[int, dict[str, float]]) -> None:
    """Median milliseconds per clip against the number of tensors, log-log, one line each."""
    import matplotlib.pyplot as plt

    from clipping_lib.lab.plots import COLORS

    counts = sorted(table)
    colors = {"naive loop": COLORS["diverged"], "vectorised": COLORS["norm"],
              "torch": COLORS["original"]}  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, color in colors.items():
        ax.loglog(counts, [table[c][name] * 1e3 for c in counts], "o-", color=color, label=name)
    ax.set(xlabel="number of 32×32 gradient tensors", ylabel="median time per clip (ms)",
           title="global norm clipping on this CPU")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    plt.show()


def small_classifier(seed: int = 0) -> torch.nn.Module:
    """A real model for the lesson: a three-layer classifier 20 -> 64 -> 64 -> 5 (six tensors)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 5),
    )  # fmt: skip


_DATA_GENERATOR_SEED = 0


def classifier_data() -> tuple[Tensor, Tensor]:
    """The lesson's fixed batch: 512 inputs of 20 features (scale 3) and labels in 0..4."""
    generator = torch.Generator().manual_seed(_DATA_GENERATOR_SEED)
    inputs = torch.randn(512, 20, generator=generator) * 3
    return inputs, torch.randint(0, 5, (512,), generator=generator)


def classifier_with_grads(seed: int = 0) -> torch.nn.Module:
    """:func:`small_classifier` after one cross-entropy backward pass on :func:`classifier_data`."""
    model = small_classifier(seed)
    inputs, labels = classifier_data()
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    return model


def max_grad_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    r""":math:`\max |g_a - g_b|` over every gradient element of two models of the same shape."""
    return max(
        (p.grad - q.grad).abs().max().item()
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )
