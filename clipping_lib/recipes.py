r"""Training-step recipes that put clipping in the right place.

Every recipe clips **after** ``backward()`` has produced the full gradient and
**before** ``optimizer.step()`` uses it, and returns the total norm measured
*before* clipping (as :func:`torch.nn.utils.clip_grad_norm_` does), so that what
is logged is the size of the gradient the model really produced.

* :func:`clip_and_step`: the plain step, optionally skipping non-finite gradients;
* :func:`amp_clip_and_step`: mixed precision: ``scaler.unscale_`` first, so the
  threshold is compared with the true gradient, not the loss-scaled one; one or several
  optimizers, with one ``scaler.update()`` after all of them;
* :func:`accumulate_and_step`: gradient accumulation that clips once, after the
  last micro-batch, i.e. the gradient of the whole batch;
* :func:`register_clip_pre_hook`: clipping done by the optimizer itself, just
  before each ``step()``, globally or per parameter group; right under a ``GradScaler``
  also for ``fused=True`` optimizers, and with ``step(closure)``;
* :func:`register_value_clip_hooks`: value clipping inside ``backward()`` with
  ``Tensor.register_hook`` (it clamps each backward pass's gradient separately);
* :func:`grads_are_finite`: one fused check for NaN/inf gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from clipping_lib._checks import as_tensor_list, check_int, check_norm_type, check_threshold
from clipping_lib.clip import clip_grad_norm_, clip_grads_with_norm_, get_total_norm

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


def _check_optimizers(optimizer: object) -> list[torch.optim.Optimizer]:
    """One optimizer, or a non-empty sequence of them, as a list; errors name the position."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    if not isinstance(optimizer, Sequence) or isinstance(optimizer, str):
        name = type(optimizer).__name__
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a list of them, got {name}")
    if not optimizer:
        raise ValueError("optimizer must hold at least one torch.optim.Optimizer")
    for index, item in enumerate(optimizer):
        if not isinstance(item, torch.optim.Optimizer):
            name = type(item).__name__
            raise TypeError(f"optimizer[{index}] must be a torch.optim.Optimizer, got {name}")
    return list(optimizer)


def amp_clip_and_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
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

    ``optimizer`` may be a list of optimizers (say, one per parameter group of a
    model): every one is unscaled **before** the single ``scaler.update()``, and
    ``parameters`` (all of them, for one global norm) are clipped together. Calling this
    function once per optimizer would be wrong: after an overflow the first call's
    ``update()`` halves the scale, and the second optimizer's gradients, scaled by the
    old :math:`s`, are divided by :math:`s/2`: twice too large. With several optimizers a
    non-finite global norm skips **every** optimizer's step (one host sync): no
    optimizer gets a clipped gradient from an infinite norm; ``update()`` lowers the
    scale once. The gradients are then left unscaled and unclipped.
    """
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    optimizers = _check_optimizers(optimizer)
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    norm_type = check_norm_type(norm_type)
    for opt in optimizers:
        scaler.unscale_(opt)
    total_norm = get_total_norm([p.grad for p in params if p.grad is not None], norm_type)
    if len(optimizers) > 1 and not torch.isfinite(total_norm):
        scaler.update()
        return total_norm
    clip_grads_with_norm_(params, max_norm, total_norm)
    for opt in optimizers:
        scaler.step(opt)
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
    Every one of ``parameters`` must belong to ``optimizer`` (a ``ValueError`` names the
    first that does not, before any backward): only the optimizer's gradients are zeroed
    here, so another parameter's gradient would grow from call to call.
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
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for index, p in enumerate(params):
        if id(p) not in owned:
            raise ValueError(
                f"parameters[{index}] is not among the optimizer's parameters: its gradient "
                "would enter the norm, never be stepped, and build up over the calls (the "
                "optimizer's zero_grad does not reach it); pass only the optimizer's parameters"
            )
    optimizer.zero_grad(set_to_none=True)
    total = sum(counts)
    for batch, count in zip(batches, counts, strict=True):
        (loss_fn(batch) / (total / count)).backward()  # equal sizes: / k exactly
    return clip_and_step(optimizer, params, max_norm, norm_type=norm_type)


def _unscaled_norm(params: list[Tensor], norm_type: float, scale: Tensor | None) -> Tensor:
    r"""The p-norm of the gradients of ``params``; divided by ``scale`` when they hold
    :math:`s\,g` (a fused optimizer's step under a ``GradScaler``)."""
    norm = get_total_norm([p.grad for p in params if p.grad is not None], norm_type)
    if scale is None:
        return norm
    return (norm.float() / scale.to(norm.device, torch.float32)).to(norm.dtype)


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
    The pre-clip norms (0-d tensors, no host sync) are appended to ``norms`` if given:
    always the norm of the **true** gradient :math:`g`, never of the loss-scaled one.

    **Under a** ``GradScaler``, ``scaler.step(optimizer)`` works for every optimizer:

    * a plain (``foreach`` or for-loop) optimizer: the scaler unscales the gradients
      before ``step()``, so the hook sees :math:`g` and clips it;
    * a ``fused=True`` optimizer: the scaler does *not* unscale; it hands the scale
      :math:`s` to the fused kernel (as ``optimizer.grad_scale``), which divides by it
      inside the update. The hook then sees :math:`s\,g`: it measures
      :math:`\lVert s\,g\rVert / s = \lVert g\rVert` and scales the gradients by
      :math:`\min(1, c / (\lVert g\rVert + \varepsilon))`, which clipping commutes with, so
      the kernel's update is that of the clipped true gradient;
    * either kind after an explicit ``scaler.unscale_(optimizer)``: the hook sees
      :math:`g`.

    An overflow leaves a non-finite norm; the gradients stay non-finite and the scaler
    skips the step as without clipping. An optimizer that takes the old ``grad_scaler``
    keyword is refused with a ``RuntimeError``: its step unscales inside, after the hook.

    **With** ``optimizer.step(closure)`` the gradients do not exist yet when the hook
    runs: the hook wraps the closure instead, so every gradient the closure computes is
    clipped before the optimizer reads it (``LBFGS`` evaluates it several times: each is
    clipped, and each appends to ``norms``).

    Remove the hook with ``handle.remove()``.
    """
    optimizer = _check_optimizer(optimizer)
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    norm_type = check_norm_type(norm_type)
    for index, group in enumerate(optimizer.param_groups):
        if "max_norm" in group:
            name = f"param_groups[{index}]['max_norm']"
            check_threshold(group["max_norm"], name, allow_inf=True)

    def clip(opt: torch.optim.Optimizer) -> None:
        scale = getattr(opt, "grad_scale", None)  # set by GradScaler.step for fused optimizers
        if per_group:
            groups = opt.param_groups
            pairs = [(group["params"], group.get("max_norm", max_norm)) for group in groups]
        else:
            pairs = [([p for group in opt.param_groups for p in group["params"]], max_norm)]
        measured = []
        for params, limit in pairs:
            norm = _unscaled_norm(params, norm_type, scale)
            clip_grads_with_norm_(params, limit, norm)
            measured.append(norm)
        if norms is not None:
            norms.extend(measured)

    def clip_before_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict):
        if "grad_scaler" in kwargs:
            raise RuntimeError(
                "register_clip_pre_hook cannot clip for an optimizer whose step takes "
                "grad_scaler=: it unscales inside step(), after the hook; call "
                "scaler.unscale_(optimizer) before scaler.step(optimizer) and clip there"
            )
        # args[0] is the optimizer itself (torch passes step's full argument list).
        closure = kwargs["closure"] if "closure" in kwargs else (args[1] if len(args) > 1 else None)
        if closure is None:
            clip(opt)
            return None

        def clipped_closure():
            loss = closure()
            clip(opt)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": clipped_closure}
        return (args[0], clipped_closure, *args[2:]), kwargs

    return optimizer.register_step_pre_hook(clip_before_step)


def register_value_clip_hooks(
    parameters: Tensor | Iterable[Tensor], clip_value: float
) -> list[RemovableHandle]:
    r"""Clamp each parameter's gradient to :math:`[-c, c]` inside ``backward()``.

    The hook sees the gradient of one backward pass (all uses of the parameter in
    that graph already summed) before it is added to ``.grad``. After a single
    backward into empty ``.grad`` this equals ``clip_grad_value_``; over ``k``
    accumulated backward passes each pass is clamped alone, so ``.grad`` can reach
    :math:`k c`. A finite ``clip_value`` larger than a parameter's dtype can hold (1e5
    for float16) is refused here, with a ``ValueError``, rather than inside
    ``backward()``. Remove with ``for h in handles: h.remove()``.
    """
    params = as_tensor_list(parameters, "parameters")
    clip_value = check_threshold(clip_value, "clip_value", allow_inf=True)
    for index, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"parameters[{index}] does not require grad; a hook would never run")
        if p.is_floating_point() and math.isfinite(clip_value):
            largest = torch.finfo(p.dtype).max
            if clip_value > largest:
                raise ValueError(
                    f"clip_value={clip_value:g} overflows parameters[{index}]'s dtype {p.dtype} "
                    f"(largest {largest:g}): clamping its gradient would fail inside backward()"
                )

    def clamp(grad: Tensor) -> Tensor:
        return grad.clamp(min=-clip_value, max=clip_value)

    return [p.register_hook(clamp) for p in params]
