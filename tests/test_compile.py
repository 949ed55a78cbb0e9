"""torch.compile: a training step that calls a module-level clipper compiles once.

Issue 20, item 4: AutoClip, ZClip and ClipMonitor kept Python numbers that changed every
step (a step count, a buffer index), which dynamo turns into guards, so the compiled step
recompiled at every call and then fell back to eager. Their per-step state is now tensors
updated in place. ``error_on_recompile`` turns any recompile into an error, and the
compiled run must give the eager numbers. ``backend="aot_eager"`` traces exactly what
inductor would get, without needing a C++ compiler.
"""

from __future__ import annotations

import pytest
import torch

from clipping_lib.adaptive import AutoClip, ZClip
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import NormClip

pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend

STEPS = 20

MAKERS = {
    "AutoClip": lambda: AutoClip(30, window=8),
    "ZClip": lambda: ZClip(0.9, 1.5, warmup_steps=4),
    "ClipMonitor(ZClip)": lambda: ClipMonitor(ZClip(0.9, 1.5, warmup_steps=4)),
    "ClipMonitor(AutoClip)": lambda: ClipMonitor(AutoClip(30, window=8), capacity=4),
    "NormClip": lambda: NormClip(1.0),
}
FULLGRAPH = {"AutoClip", "ZClip", "NormClip"}  # ClipMonitor's record is a graph break


def _gradients(step: int) -> list[torch.Tensor]:
    """Gradients of a slowly varying size with spikes, the same on every run."""
    generator = torch.Generator().manual_seed(step)
    scale = 100.0 if step in (9, 14) else 1.0 + 0.1 * (step % 5)
    return [scale * torch.randn(shape, generator=generator) for shape in ((4, 3), (3,))]


def _run(clipper, compiled: bool, fullgraph: bool = False):
    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]

    def clip_step(parameters):
        step = clipper(parameters)
        return step.total_norm, step.threshold, step.clipped

    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(clip_step, backend=counter, fullgraph=fullgraph) if compiled else clip_step
    records = []
    for t in range(STEPS):
        for p, g in zip(params, _gradients(t), strict=True):
            p.grad = g
        norm, threshold, clipped = fn(params)
        grads = [p.grad.clone() for p in params]
        records.append((norm.clone(), threshold.clone(), clipped.clone(), *grads))
    return records, counter


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_compiled_step_compiles_once_and_gives_the_eager_numbers(name):
    torch._dynamo.reset()
    eager, _ = _run(MAKERS[name](), compiled=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, counter = _run(MAKERS[name](), compiled=True)
    # Compiled once over STEPS steps (a recompile would have raised); a graph break splits
    # the step into at most two graphs, each compiled once.
    assert counter.frame_count == 1 if name in FULLGRAPH else 1 <= counter.frame_count <= 2
    assert any(record[2] for record in eager)  # the run clips somewhere
    for expected, got in zip(eager, compiled, strict=True):
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("name", sorted(FULLGRAPH))
def test_the_clippers_compile_with_fullgraph(name):
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, counter = _run(MAKERS[name](), compiled=True, fullgraph=True)
    assert counter.frame_count == 1


def test_a_monitor_cannot_be_fullgraph_but_its_clipper_can():
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"(?i)disable|graph break|skip"):
        _run(ClipMonitor(ZClip(warmup_steps=4)), compiled=True, fullgraph=True)
    # The recipe for fullgraph: compile the clipper, record outside.
    torch._dynamo.reset()
    clipper = ZClip(0.9, 1.5, warmup_steps=4)
    monitor = ClipMonitor(clipper)
    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    compiled = torch.compile(clipper, backend="aot_eager", fullgraph=True)
    for t in range(STEPS):
        for p, g in zip(params, _gradients(t), strict=True):
            p.grad = g
        monitor.record(compiled(params))
    assert len(monitor) == STEPS and monitor.history().clip_rate > 0
