"""Every committed notebook was executed top to bottom in one fresh kernel and reads as a lesson."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NETWORK_PATTERN = re.compile(r"urlopen|urlretrieve|requests\.get|wget |curl |download=True|hf_hub")


def _code_cells(notebook: dict) -> list[dict]:
    return [
        c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()
    ]


def _markdown(notebook: dict) -> str:
    return "\n".join(
        "".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown"
    )


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_in_order_in_one_fresh_kernel(path):
    cells = _code_cells(json.loads(path.read_text()))
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stored_and_no_errors(path):
    cells = _code_cells(json.loads(path.read_text()))
    outputs = [o for c in cells for o in c["outputs"]]
    assert outputs, f"{path.name}: no stored outputs"
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reads_as_a_lesson(path):
    notebook = json.loads(path.read_text())
    text = _markdown(notebook)
    assert notebook["cells"][0]["cell_type"] == "markdown" and text.lstrip().startswith("# ")
    for heading in ("exercise", "summary"):
        assert re.search(heading, text, re.IGNORECASE), f"{path.name}: no {heading}"
    code = "\n".join("".join(c["source"]) for c in _code_cells(notebook))
    assert "# Check yourself" in code, f"{path.name}: no check-yourself cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_downloads_nothing(path):
    code = "\n".join("".join(c["source"]) for c in _code_cells(json.loads(path.read_text())))
    assert not NETWORK_PATTERN.search(code), f"{path.name} reaches for the network"
