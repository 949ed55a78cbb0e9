"""stacked: one batched BPTT equal to autograd; the batched clippers equal the library's."""

from __future__ import annotations

import math

import pytest
import torch

from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.lab import compare, training
from clipping_lib.lab.stacked import (
    ExceptReadout,
    StackedClippers,
    WithMaxNorm,
    stacked_loss_and_grads,
    stacked_norm,
    stacked_scores,
    stacked_weights,
)
from clipping_lib.lab.tasks import adding_problem, temporal_order
from clipping_lib.lab.training import TanhRNN, task_loss
from clipping_lib.strategies import NoClip, NormClip, ValueClip


def _models(task, seeds, hidden_size=8):
    return [TanhRNN(task.input_size, hidden_size, task.output_size, seed=s,
                    recurrent_scale=1.5) for s in seeds]  # fmt: skip


def _autograd_reference(task, models, inputs, targets):
    """Run i's loss and gradients from its TanhRNN (torch.nn.RNN) and autograd."""
    losses, grads = [], []
    for i, model in enumerate(models):
        x = inputs if inputs.ndim == 3 else inputs[i]
        y = targets if targets.ndim == task.targets.ndim else targets[i]
        model.zero_grad()
        loss = task_loss(task, model(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    return torch.stack(losses), [torch.stack(g) for g in zip(*grads, strict=True)]


@pytest.mark.parametrize("shared", [True, False], ids=["shared inputs", "inputs per run"])
@pytest.mark.parametrize("task", [adding_problem(64, 7, seed=1), temporal_order(64, 20, seed=1)],
                         ids=["mse", "cross-entropy"])  # fmt: skip
def test_hand_written_backpropagation_equals_autograd(task, shared):
    models = _models(task, [0, 1, 2])
    if shared:
        inputs, targets = task.inputs[:16], task.targets[:16]
    else:
        inputs = torch.stack([task.inputs[16 * i : 16 * i + 16] for i in range(3)])
        targets = torch.stack([task.targets[16 * i : 16 * i + 16] for i in range(3)])
    loss, grads = stacked_loss_and_grads(task.loss, stacked_weights(models), inputs, targets)
    expected_loss, expected = _autograd_reference(task, models, inputs, targets)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for grad, reference in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)
    scores, accuracy = stacked_scores(task.loss, stacked_weights(models), inputs, targets)
    torch.testing.assert_close(scores, expected_loss, rtol=1e-5, atol=1e-6)
    assert accuracy.isnan().all() == (task.loss == "mse")


def test_the_lab_has_one_batched_bptt():
    for module in (training, compare):
        names = vars(module)
        assert not any(n in names for n in ("_states", "_stacked_states", "_Rules"))
        assert names.get("stacked_loss_and_grads", stacked_loss_and_grads) is (
            stacked_loss_and_grads
        )


CLIPPERS = [
    NoClip,
    lambda: NormClip(0.5),
    lambda: ValueClip(0.05),
    lambda: AutoClip(10),
    lambda: AutoClip(50, window=7),
    lambda: AutoClip(90, window=None),
    lambda: AGC(0.05),
    lambda: ExceptReadout(AGC(0.05)),
    lambda: ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=6),
    lambda: ZClip(),
    lambda: WithMaxNorm(ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=6), 1.0),
    lambda: WithMaxNorm(NormClip(0.5), 0.3),
]
STEPS = 40
BAD = {12: math.nan, 13: 1e4, 20: math.inf, 21: 3e3, 30: -math.inf, 31: 5e3}  # NaN, inf, spikes


def _gradient_stream(model, step):
    """The gradients of step ``step``: seeded noise, NaN/inf or a spike at the steps in BAD."""
    generator = torch.Generator().manual_seed(step)
    grads = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
    bad = BAD.get(step)
    if bad is not None and math.isfinite(bad):
        grads = [g * bad for g in grads]
    elif bad is not None:
        grads[1][0, 0] = bad  # what an fp16 overflow leaves behind
    return grads


@pytest.mark.parametrize("make", CLIPPERS, ids=lambda make: repr(make()))
def test_stacked_clippers_equal_the_library_clippers_step_by_step(make):
    """Same gradients, same weights: the batched rule gives the library clipper's gradients,
    norm, threshold and clip flag on every step, NaN and inf steps included."""
    task = adding_problem(8, 6)
    models = _models(task, [0, 1])
    weights = stacked_weights(models)
    library = [make() for _ in models]
    others = [NormClip(0.3), ZClip(warmup_steps=3)]  # other kinds beside it, other rows
    rules = StackedClippers([make(), others[0], make(), others[1]], STEPS)
    extra = [_models(task, [5])[0], _models(task, [6])[0]]
    all_weights = [torch.cat([w[:1], e, w[1:], f]) for w, e, f in zip(
        weights, stacked_weights(extra[:1]), stacked_weights(extra[1:]), strict=True)]
    for step in range(STEPS):
        grads = [_gradient_stream(model, step + 100 * i) for i, model in enumerate(models)]
        stacked = [torch.stack([grads[0][k], torch.ones_like(grads[0][k]), grads[1][k],
                                torch.ones_like(grads[0][k])]) for k in range(6)]  # fmt: skip
        norm, threshold, clipped = rules(step, all_weights, stacked)
        for i, (row, model, clipper) in enumerate(zip((0, 2), models, library, strict=True)):
            for p, g in zip(model.parameters(), grads[i], strict=True):
                p.grad = g.clone()
            record = clipper(model.parameters())
            where = f"step {step}, run {i}"
            for p, g in zip(model.parameters(), stacked, strict=True):
                torch.testing.assert_close(g[row], p.grad, rtol=1e-5, atol=1e-7,
                                           equal_nan=True, msg=where)  # fmt: skip
            torch.testing.assert_close(norm[row], record.total_norm, rtol=1e-5, atol=0,
                                       equal_nan=True, msg=where)  # fmt: skip
            torch.testing.assert_close(threshold[row], record.threshold, rtol=1e-5, atol=0,
                                       equal_nan=True, msg=where)  # fmt: skip
            assert bool(clipped[row]) == bool(record.clipped), where


def test_stacked_norm_is_clip_grad_norm_s_norm():
    grads = [torch.randn(3, 4, 5), torch.randn(3, 7)]
    expected = [torch.nn.utils.get_total_norm([g[i] for g in grads]) for i in range(3)]
    torch.testing.assert_close(stacked_norm(grads), torch.stack(expected))
    torch.testing.assert_close(stacked_norm(grads, 1), grads[0].flatten(1).norm(dim=1))


def test_stacked_clippers_refuse_unknown_or_used_clippers():
    with pytest.raises(TypeError, match="clippers must be"):
        StackedClippers([lambda params: None], 5)
    with pytest.raises(TypeError, match="clippers must be"):
        StackedClippers([ExceptReadout(NormClip(1.0))], 5)
    used = AutoClip(10)
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    used(layer.parameters())
    with pytest.raises(ValueError, match="fresh"):
        StackedClippers([used], 5)


def test_with_max_norm_is_the_zclip_authors_max_grad_norm():
    """Warm-up: clip_grad_norm_(1.0); after it: min(ZClip's landing norm, 1.0); ZClip's
    statistics are those of ZClip alone."""
    layer = torch.nn.Linear(3, 2)
    alone, capped = ZClip(warmup_steps=5), WithMaxNorm(ZClip(warmup_steps=5), 1.0)
    for step in range(12):
        generator = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=generator) * (40 if step == 9 else 1)
                 for p in layer.parameters()]  # fmt: skip
        finals = []
        for clipper in (alone, capped):
            for p, g in zip(layer.parameters(), grads, strict=True):
                p.grad = g.clone()
            record = clipper(layer.parameters())
            finals.append(torch.nn.utils.get_total_norm([p.grad for p in layer.parameters()]))
        assert float(finals[1]) == pytest.approx(min(float(finals[0]), 1.0), rel=1e-5)
        assert bool(record.clipped) == (float(finals[0]) > 1.0 or step == 9)
        torch.testing.assert_close(capped.clipper.mean, alone.mean, equal_nan=True)
    with pytest.raises(TypeError, match="clippers must be"):
        StackedClippers([WithMaxNorm(AGC(0.1), 1.0)], 5)
