"""Seconds to run each notebook top to bottom in a fresh kernel, against the course's bars.

Run:  python benchmarks/bench_notebooks.py [notebooks/05_*.ipynb ...]

Each notebook is executed in a new kernel (nbclient), as nbval and a learner's
"Run All" do, from a temporary copy so the stored outputs are not touched. The wall
time includes the kernel start. Bars: 30 s per notebook, 180 s for the whole course,
on a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK_BAR_S = 30.0
COURSE_BAR_S = 180.0
ROOT = Path(__file__).resolve().parent.parent


def run_seconds(path: Path) -> float:
    """Wall seconds to execute ``path`` in a fresh kernel, started in the notebooks folder."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args()
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    print(f"{os.cpu_count()} cores\n")
    print(f"| notebook | seconds | under {NOTEBOOK_BAR_S:.0f} s |\n|---|---|---|")
    total = 0.0
    for path in paths:
        seconds = run_seconds(path)
        total += seconds
        verdict = "yes" if seconds < NOTEBOOK_BAR_S else "NO"
        print(f"| {path.name} | {seconds:.1f} | {verdict} |", flush=True)
    verdict = "yes" if total < COURSE_BAR_S else "NO"
    print(f"| **course** | **{total:.1f}** | under {COURSE_BAR_S:.0f} s: {verdict} |")


if __name__ == "__main__":
    main()
