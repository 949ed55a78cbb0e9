"""How fast is clipping_lib's norm clipping next to PyTorch's, and next to the naive loop?

Run:  python benchmarks/bench_clip.py [--rounds 15] [--device cpu|cuda] [--skip-large] [--check]

For parameter sets of 10, 100, 1,000 and 10,000 tensors and one ~100M-parameter model,
the three implementations are timed interleaved in one run (clipping_lib.lab.timing.compare),
each call on freshly restored gradients, and the median ratio to PyTorch is printed.
For the large model, effective memory bandwidth is compared with a plain copy measured
in the same run: norm clipping reads the gradients twice and writes them once (3 passes).
With --check it fails unless the naive loop is over 1.2x slower than PyTorch at 1,000
tensors (the claim notebook 04 explains; a speed claim is checked here, not in a notebook).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

import clipping_lib
from clipping_lib.lab.manual import naive_clip_grad_norm_
from clipping_lib.lab.timing import compare

MAX_NORM = 1.0


def small_tensor_set(count: int, device: str) -> list[torch.nn.Parameter]:
    """``count`` parameters of 32 x 32 elements, like the many small tensors of a deep net."""
    generator = torch.Generator().manual_seed(count)
    return [
        torch.nn.Parameter(torch.randn(32, 32, generator=generator).to(device))
        for _ in range(count)
    ]


def large_model(device: str) -> list[torch.nn.Parameter]:
    """About 100M parameters in the shapes of an 8-layer, width-1024 transformer."""
    width, layers = 1024, 8
    shapes = []
    for _ in range(layers):
        shapes += [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)]
        shapes += [(3 * width,), (width,), (4 * width,), (width,), (width,), (width,)]
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=generator).to(device)) for s in shapes]


def attach_grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Give every parameter a gradient of norm well above MAX_NORM; return a master copy."""
    for p in params:
        p.grad = torch.randn_like(p) * 10
    return [p.grad.clone() for p in params]


def candidates(params: list[torch.nn.Parameter]) -> dict:
    return {
        "torch": lambda _: torch.nn.utils.clip_grad_norm_(params, MAX_NORM),
        "clipping_lib": lambda _: clipping_lib.clip_grad_norm_(params, MAX_NORM),
        "naive loop": lambda _: naive_clip_grad_norm_(params, MAX_NORM),
    }


def restore(params: list[torch.nn.Parameter], master: list[torch.Tensor]):
    """Setup for each timed call: the same unclipped gradients every time."""

    def setup() -> None:
        torch._foreach_copy_([p.grad for p in params], master)

    return setup


NAIVE_SLOWER_AT_1000 = 1.2  # --check: naive loop / torch, median of per-round ratios


def run_case(name: str, params, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    master = attach_grads(params)
    seconds = compare(candidates(params), restore(params, master), rounds=rounds)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratios = {
        k: statistics.median(a / b for a, b in zip(v, seconds["torch"], strict=True))
        for k, v in seconds.items()
    }
    print(
        f"| {name} | {med['torch'] * 1e3:.3f} | {med['clipping_lib'] * 1e3:.3f} "
        f"| {med['naive loop'] * 1e3:.3f} | {ratios['clipping_lib']:.3f} "
        f"| {ratios['naive loop']:.2f} |",
        flush=True,
    )
    return med, ratios


def bandwidth(params, clip_seconds: float, rounds: int) -> None:
    grads = [p.grad for p in params]
    copies = [torch.empty_like(g) for g in grads]
    seconds = compare(
        {"copy": lambda _: torch._foreach_copy_(copies, grads)}, lambda: None, rounds=rounds
    )
    copy_seconds = statistics.median(seconds["copy"])
    nbytes = sum(g.numel() * g.element_size() for g in grads)
    clip_bw = 3 * nbytes / clip_seconds / 1e9  # read for the norm, read + write to scale
    copy_bw = 2 * nbytes / copy_seconds / 1e9  # read + write
    print(
        f"\nLarge model: {sum(g.numel() for g in grads) / 1e6:.1f}M parameters, "
        f"{nbytes / 1e9:.2f} GB of gradients"
    )
    print("| operation | median ms | effective GB/s |\n|---|---|---|")
    print(f"| plain copy (2 passes) | {copy_seconds * 1e3:.1f} | {copy_bw:.1f} |")
    print(f"| clipping_lib.clip_grad_norm_ (3 passes) | {clip_seconds * 1e3:.1f} | {clip_bw:.1f} |")
    print(f"\nclip_grad_norm_ reaches {clip_bw / copy_bw:.0%} of the copy's bandwidth.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-large", action="store_true", help="skip the ~100M model")
    parser.add_argument(
        "--check", action="store_true", help="fail unless the naive loop is slower at 1,000 tensors"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}\n"
    )
    print(
        "| case | torch ms | clipping_lib ms | naive loop ms | clipping_lib / torch "
        "| naive / torch |\n|---|---|---|---|---|---|"
    )
    naive_ratio = {}
    for count in (10, 100, 1_000, 10_000):
        params = small_tensor_set(count, args.device)
        _, ratios = run_case(f"{count:,} tensors of 32x32", params, args.rounds)
        naive_ratio[count] = ratios["naive loop"]
    if not args.skip_large:
        params = large_model(args.device)
        med, _ = run_case("~100M-parameter model", params, max(5, args.rounds // 3))
        bandwidth(params, med["clipping_lib"], max(5, args.rounds // 3))
    if args.check:
        ratio = naive_ratio[1_000]
        assert ratio > NAIVE_SLOWER_AT_1000, f"naive loop / torch at 1,000 tensors: {ratio:.2f}"
        print(f"\ncheck passed: the naive loop is {ratio:.2f}x PyTorch's time at 1,000 tensors")


if __name__ == "__main__":
    main()
