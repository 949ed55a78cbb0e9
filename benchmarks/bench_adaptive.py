"""Do AutoClip and ClipMonitor cost the same per step at step 1,000 and at step 1,000,000?

Run:  python benchmarks/bench_adaptive.py [--rounds 20] [--steps 1000 1000000]

A clipper's state at step ``T`` is made directly (``load_state_dict`` with ``T`` recorded
norms, lognormal), then one more step is timed on a 20-tensor, 82k-parameter gradient,
interleaved with the other clippers in the same run (clipping_lib.lab.timing.compare), each
call on freshly restored gradients. ``NormClip(1.0)``, i.e. ``clip_grad_norm_``, is the
baseline: the ratio says what the adaptive part adds. AutoClip is timed with its default
window of 10,000 steps and with ``window=None`` (the paper's full history).

Memory per recorded step: ``ClipMonitor.record`` is called 1,000,000 times and the bytes
of its buffers and the growth of the process's resident memory are divided by the
steps; the old record, a list of three 0-d tensors per step, is measured the same way on
100,000 steps.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics

import numpy as np
import torch

from clipping_lib.adaptive import AutoClip, ZClip
from clipping_lib.lab.timing import compare
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import ClipStep, NormClip


def parameters() -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 64, generator=generator)) for _ in range(20)]


def norms(count: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).lognormal(size=count).astype(np.float32))


def autoclip_at(steps: int, window: int | None) -> AutoClip:
    clipper = AutoClip(10, window=window)
    kept = steps if window is None else min(steps, window)
    state = {"steps": steps, "window": window or 0, "norms": norms(kept)}  # 0: full history
    clipper.load_state_dict(state)
    return clipper


def zclip_at(steps: int) -> ZClip:
    clipper = ZClip()
    state = clipper.state_dict()
    warm = norms(clipper.warmup_steps)
    state.update(steps=steps, warmup_count=torch.tensor(clipper.warmup_steps),
                 warmup_norms=warm, mean=warm.mean(), var=warm.var(correction=0))  # fmt: skip
    clipper.load_state_dict(state)
    return clipper


def monitor_at(steps: int) -> ClipMonitor:
    monitor = ClipMonitor(NormClip(1.0))
    recorded = norms(steps)
    monitor.load_state_dict({
        "norm": recorded, "threshold": torch.ones(steps), "clipped": recorded > 1.0,
    })  # fmt: skip
    return monitor


def time_per_step(steps: int, rounds: int) -> dict[str, float]:
    """Median seconds of one step of each clipper whose state is at step ``steps``."""
    params = parameters()
    master = [torch.randn_like(p) * 3 for p in params]

    def fresh_grads() -> None:
        for p, g in zip(params, master, strict=True):
            p.grad = g.clone()

    clippers = {
        "NormClip (baseline)": NormClip(1.0),
        "AutoClip (window 10k)": autoclip_at(steps, 10_000),
        "AutoClip (full history)": autoclip_at(steps, None),
        "ZClip": zclip_at(steps),
        "ClipMonitor(NormClip)": monitor_at(steps),
    }
    seconds = compare(
        {name: (lambda _, c=clipper: c(params)) for name, clipper in clippers.items()},
        fresh_grads,
        rounds=rounds,
    )
    return {name: statistics.median(values) for name, values in seconds.items()}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def bytes_per_step_monitor(steps: int) -> tuple[float, float]:
    """(buffer bytes, resident-memory growth) per step of ClipMonitor after ``steps`` records."""
    gc.collect()
    before = resident_bytes()
    monitor = ClipMonitor(NormClip(1.0))
    for k in range(steps):
        norm = torch.tensor(float(k % 7))
        monitor.record(ClipStep(norm, torch.tensor(1.0), norm > 1.0))
    buffers = sum(b.numel() * b.element_size() for b in monitor.buffers())
    return buffers / steps, (resident_bytes() - before) / steps


def bytes_per_step_list(steps: int) -> float:
    """Resident-memory growth per step of the old record: a list of three 0-d tensors."""
    gc.collect()
    before = resident_bytes()
    record = []
    for k in range(steps):
        norm = torch.tensor(float(k % 7))
        record.append(ClipStep(norm, torch.tensor(1.0), norm > 1.0))
    return (resident_bytes() - before) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--memory-steps", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread")

    table = {steps: time_per_step(steps, args.rounds) for steps in args.steps}
    first, last = args.steps[0], args.steps[-1]
    print(f"\nmedian ms per step, state at step T ({args.rounds} interleaved rounds)")
    print(f"| clipper | {' | '.join(f'T = {s:,}' for s in args.steps)} | T={last:,} / T={first:,} |"
          f" x baseline at T={last:,} |")  # fmt: skip
    print("|---|" + "---|" * (len(args.steps) + 2))
    baseline = table[last]["NormClip (baseline)"]
    for name in table[first]:
        cells = " | ".join(f"{table[s][name] * 1e3:.3f}" for s in args.steps)
        growth = table[last][name] / table[first][name]
        print(f"| {name} | {cells} | {growth:.2f} | {table[last][name] / baseline:.2f} |")

    buffers, resident = bytes_per_step_monitor(args.memory_steps)
    old = bytes_per_step_list(args.memory_steps // 10)
    print(f"\nClipMonitor, {args.memory_steps:,} steps recorded: {buffers:.1f} bytes of buffers "
          f"per step, resident memory +{resident:.1f} bytes per step")  # fmt: skip
    print(f"list of three 0-d tensors per step ({args.memory_steps // 10:,} steps): "
          f"resident memory +{old:.0f} bytes per step ({old / max(resident, 1e-9):.0f}x)")


if __name__ == "__main__":
    main()
