"""Execute notebooks top to bottom in a fresh kernel and store their outputs, reproducibly.

    python scripts/execute_notebooks.py                      # every lesson
    python scripts/execute_notebooks.py notebooks/05_*.ipynb # some

Each notebook runs in its own fresh kernel from the notebooks/ folder, as a learner's would.
What is stored is what a reader needs and nothing that changes from run to run: no
execution timestamps in the cells' metadata (nbclient's ``record_timing`` is off, and any
old ones are removed), and the file is written as nbformat writes it. A cell that raises
stops the run and leaves the file as it was.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, timeout: int = 600) -> float:
    """Run ``path`` in a fresh kernel, store its outputs; returns the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    ).execute()
    seconds = time.perf_counter() - started
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every lesson)")
    paths = parser.parse_args().paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path.resolve()):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
