r"""Training-step recipes that put clipping in the right place.

Every recipe clips **after** ``backward()`` has produced the full gradient and
**before** ``optimizer.step()`` uses it, and returns the total norm measured
*before* clipping (as :func:`torch.nn.utils.clip_grad_norm_` does), so that what
is logged is the size of the gradient the model really produced.

* :func:`clip_and_step`: the plain step, optionally skipping non-finite gradients;
* :func:`amp_clip_and_step`: mixed precision: ``scaler.unscale_`` first, so the
  threshold is compared with the true gradient, not the loss-scaled one;
* :func:`accumulate_and_step`: gradient accumulation that clips once, after the
  last micro-batch, i.e. the gradient of the whole batch;
* :func:`register_clip_pre_hook`: clipping done by the optimizer itself, just
  before each ``step()``, globally or per parameter group;
* :func:`register_value_clip_hooks`: value clipping inside ``backward()`` with
  ``Tensor.register_hook`` (it clamps each backward pass's gradient separately);
* :func:`grads_are_finite`: one fused check for NaN/inf gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from clipping_lib._checks import as_tensor_list, check_int, check_norm_type, check_threshold
from clipping_lib.clip import clip_grad_norm_, get_total_norm

__all__ = [
    "accumulate_and_step",
    "amp_clip_and_step",
    "clip_and_step",
    "grads_are_finite",
    "register_clip_pre_hook",
    "register_value_clip_hooks",
]


def _check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        name = type(optimizer).__name__
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {name}")
    return optimizer


def grads_are_finite(parameters: Tensor | Iterable[Tensor]) -> Tensor:
    r"""A 0-d bool tensor: are all gradients free of NaN and inf?

    Uses the max-norm :math:`\max_i |g_i|`, which cannot overflow and is NaN or inf
    exactly when some element is. One fused pass; branching on the result in Python
    (``if grads_are_finite(...)``) is the single host sync.
    """
    params = as_tensor_list(parameters, "parameters")
    grads = [p.grad for p in params if p.grad is not None]
    return torch.isfinite(get_total_norm(grads, "inf"))


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
    skip_nonfinite: bool = False,
) -> Tensor:
    r"""Clip the gradients to ``max_norm``, then ``optimizer.step()``; return the pre-clip norm.

    Call it after ``loss.backward()``. With ``skip_nonfinite=True`` a NaN or inf norm
    skips the step (one host sync): the parameters stay unchanged, the gradients are
    left as clipping made them, for the next ``zero_grad()``. Otherwise such a norm
    propagates as in PyTorch: the coefficient :math:`c/\infty = 0` zeroes the finite
    gradients and turns the infinite ones into NaN, which ``step()`` writes into the
    parameters.
    """
    optimizer = _check_optimizer(optimizer)
    params = as_tensor_list(parameters, "parameters")
    total_norm = clip_grad_norm_(params, max_norm, norm_type)
    if skip_nonfinite and not torch.isfinite(total_norm):
        return total_norm
    optimizer.step()
    return total_norm


def amp_clip_and_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
) -> Tensor:
    r"""The mixed-precision step: ``unscale_``, clip, ``scaler.step``, ``scaler.update``.

    Call it after ``scaler.scale(loss).backward()``. Gradients then hold
    :math:`s\,g` for the loss scale :math:`s`; ``unscale_`` divides by :math:`s`
    first, so the returned pre-clip norm and the threshold refer to the true
    gradient. If the gradients overflowed, ``scaler.step`` skips the step and
    ``update`` lowers the scale, as without clipping.
    """
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    optimizer = _check_optimizer(optimizer)
    params = as_tensor_list(parameters, "parameters")
    scaler.unscale_(optimizer)
    total_norm = clip_grad_norm_(params, max_norm, norm_type)
    scaler.step(optimizer)
    scaler.update()
    return total_norm


def _batch_size(batch: object, index: int) -> int:
    """The number of examples in a micro-batch: a tensor's first dimension, or that of the
    first tensor in a tuple, list or dict."""
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, (tuple, list, Mapping)):
        batch = next((item for item in items if isinstance(item, Tensor)), None)
    if isinstance(batch, Tensor) and batch.ndim > 0:
        return batch.shape[0]
    raise TypeError(
        f"cannot tell the size of micro_batches[{index}]; pass sizes=[...] with the number "
        "of examples in each micro-batch"
    )


def accumulate_and_step(
    loss_fn: Callable[[object], Tensor],
    micro_batches: Sequence[object],
    optimizer: torch.optim.Optimizer,
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
    sizes: Sequence[int] | None = None,
) -> Tensor:
    r"""One optimizer step over ``k`` micro-batches, clipped once; return the pre-clip norm.

    ``loss_fn(batch)`` returns the *mean* loss over a micro-batch of :math:`n_i` examples.
    Zeroes the gradients, then runs ``(loss_fn(batch) * n_i / N).backward()`` for each
    micro-batch (:math:`N = \sum n_i`) so that ``.grad`` sums to the gradient of the
    mean loss over the whole batch, also when the micro-batches differ in size (the last
    one of an epoch); with equal sizes the weight is :math:`1/k`. The sizes are read from
    each micro-batch (a tensor's first dimension, or that of the first tensor in a tuple,
    list or dict) unless given as ``sizes``. Then it clips that sum once and steps.
    Clipping inside the loop would shrink the early micro-batches' share again at every
    later clip.
    """
    optimizer = _check_optimizer(optimizer)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    batches = list(micro_batches)
    if not batches:
        raise ValueError("micro_batches must hold at least one micro-batch")
    if sizes is None:
        counts = [_batch_size(batch, i) for i, batch in enumerate(batches)]
    else:
        counts = [check_int(n, f"sizes[{i}]", 1) for i, n in enumerate(sizes)]
        if len(counts) != len(batches):
            raise ValueError(f"sizes has {len(counts)} entries for {len(batches)} micro-batches")
    if not all(counts):
        raise ValueError(f"every micro-batch must hold an example, got sizes {counts}")
    params = as_tensor_list(parameters, "parameters")
    optimizer.zero_grad(set_to_none=True)
    total = sum(counts)
    for batch, count in zip(batches, counts, strict=True):
        (loss_fn(batch) / (total / count)).backward()  # equal sizes: / k exactly
    return clip_and_step(optimizer, params, max_norm, norm_type=norm_type)


def register_clip_pre_hook(
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
    per_group: bool = False,
    norms: list[Tensor] | None = None,
) -> RemovableHandle:
    r"""Make ``optimizer.step()`` clip its own parameters' gradients first.

    Global (default): one norm over every parameter of every group, clipped to
    ``max_norm``. ``per_group=True``: each parameter group is clipped on its own, to
    ``group.get("max_norm", max_norm)``, so a group can carry its own threshold.
    The pre-clip norms (0-d tensors, no host sync) are appended to ``norms`` if given.
    Remove the hook with ``handle.remove()``.
    """
    optimizer = _check_optimizer(optimizer)
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    norm_type = check_norm_type(norm_type)
    for index, group in enumerate(optimizer.param_groups):
        if "max_norm" in group:
            name = f"param_groups[{index}]['max_norm']"
            check_threshold(group["max_norm"], name, allow_inf=True)

    def clip_before_step(opt: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        if per_group:
            measured = [
                clip_grad_norm_(group["params"], group.get("max_norm", max_norm), norm_type)
                for group in opt.param_groups
            ]
        else:
            params = [p for group in opt.param_groups for p in group["params"]]
            measured = [clip_grad_norm_(params, max_norm, norm_type)]
        if norms is not None:
            norms.extend(measured)

    return optimizer.register_step_pre_hook(clip_before_step)


def register_value_clip_hooks(
    parameters: Tensor | Iterable[Tensor], clip_value: float
) -> list[RemovableHandle]:
    r"""Clamp each parameter's gradient to :math:`[-c, c]` inside ``backward()``.

    The hook sees the gradient of one backward pass (all uses of the parameter in
    that graph already summed) before it is added to ``.grad``. After a single
    backward into empty ``.grad`` this equals ``clip_grad_value_``; over ``k``
    accumulated backward passes each pass is clamped alone, so ``.grad`` can reach
    :math:`k c`. Remove with ``for h in handles: h.remove()``.
    """
    params = as_tensor_list(parameters, "parameters")
    clip_value = check_threshold(clip_value, "clip_value", allow_inf=True)
    for index, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"parameters[{index}] does not require grad; a hook would never run")

    def clamp(grad: Tensor) -> Tensor:
        return grad.clamp(min=-clip_value, max=clip_value)

    return [p.register_hook(clamp) for p in params]
