"""What does each clipper cost per step under torch.compile, against the same clipper eager?

Run:  python benchmarks/bench_compile.py [--rounds 50] [--backends aot_eager inductor]

Each clipper is called once per step on a 20-tensor, 82k-parameter gradient (fresh
gradients every call), eager and compiled (``torch.compile(step)``, where ``step`` calls
a clipper held outside it, as a training step calls a module-level one), interleaved in
the same process with ``clipping_lib.lab.timing.compare``; each compiled variant gets its
own clipper, so state is never shared. Reported: the median ms per step, the ratio
compiled / eager for the same clipper, and how many graphs dynamo compiled over the run
(one per graph break side; a recompile would add one per step). ``aot_eager`` traces
exactly what inductor gets but runs it with eager kernels (it measures the tracing
overhead and the graph-break cost, not code generation); ``inductor`` needs a C++
compiler and is skipped, with a note, where it fails.
"""

from __future__ import annotations

import argparse
import platform

import torch

from clipping_lib.adaptive import AGC, AutoClip, ZClip
from clipping_lib.lab.timing import compare, medians
from clipping_lib.monitor import ClipMonitor
from clipping_lib.strategies import NormClip

CLIPPERS = {
    "NormClip(1.0)": lambda: NormClip(1.0),
    "AutoClip(10)": lambda: AutoClip(10),
    "ZClip()": lambda: ZClip(),
    "AGC(0.01)": lambda: AGC(0.01),
    "ClipMonitor(ZClip())": lambda: ClipMonitor(ZClip()),
}


def make_step(clipper):
    def step(parameters):
        result = clipper(parameters)
        return result.total_norm, result.threshold, result.clipped

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["aot_eager", "inductor"])
    args = parser.parse_args()
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 64, generator=generator)) for _ in range(20)]
    grads = [torch.randn(64, 64, generator=generator) for _ in range(20)]

    def setup():
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        return params

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread")
    print("| clipper | eager ms | " + " | ".join(
        f"{b} ms | {b} / eager | {b} graphs" for b in args.backends) + " |")  # fmt: skip
    print("|---|---|" + "---|---|---|" * len(args.backends))
    for name, make in CLIPPERS.items():
        candidates, counters = {"eager": make_step(make())}, {}
        for backend in args.backends:
            counters[backend] = CompileCounterWithBackend(backend)
            compiled = torch.compile(make_step(make()), backend=counters[backend])
            try:
                compiled(setup())  # compile outside the timed rounds
            except Exception as error:  # a backend that cannot run here
                print(f"<!-- {name}: {backend} failed: {type(error).__name__} -->")
                continue
            candidates[backend] = compiled
        seconds = medians(compare(candidates, setup, rounds=args.rounds))
        ms = {key: 1e3 * value for key, value in seconds.items()}
        cells = [f"{ms['eager']:.3f}"]
        for backend in args.backends:
            if backend in ms:
                ratio = ms[backend] / ms["eager"]
                cells += [f"{ms[backend]:.3f}", f"{ratio:.2f}", str(counters[backend].frame_count)]
            else:
                cells += ["failed", "-", "-"]
        print(f"| `{name}` | " + " | ".join(cells) + " |")
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
