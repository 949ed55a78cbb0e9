"""Every committed notebook was executed top to bottom in one fresh kernel and reads as a lesson."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NETWORK_PATTERN = re.compile(r"urlopen|urlretrieve|requests\.get|wget |curl |download=True|hf_hub")
# A stored output must read the same on every learner's machine: no path of the machine that ran it.
MACHINE_PATH_PATTERN = re.compile(
    r"/work/|/root/|/home/|/tmp/|site-packages|/usr/(local/)?lib|[A-Z]:\\\\"
)
# An assert must hold on any machine: never on a version, a clock or a speed.
MACHINE_ASSERT_PATTERN = re.compile(
    r"__version__|python_version|perf_counter|monotonic|time\.time|seconds|elapsed|_ms\b|speedup"
    r"|slower|faster"
)
README = Path(__file__).parent.parent / "README.md"


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_machine_paths(path):
    for cell in _code_cells(json.loads(path.read_text())):
        for output in cell["outputs"]:
            match = MACHINE_PATH_PATTERN.search(json.dumps(output))
            assert not match, f"{path.name}: a stored output shows a machine path ({match.group()})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_asserts_do_not_depend_on_the_machine(path):
    for cell in _code_cells(json.loads(path.read_text())):
        for line in "".join(cell["source"]).splitlines():
            if re.match(r"\s*assert\b", line):
                assert not MACHINE_ASSERT_PATTERN.search(line), f"{path.name}: {line.strip()}"


def test_readme_course_map_lists_every_notebook():
    readme = README.read_text()
    missing = [p.name for p in NOTEBOOKS if f"(notebooks/{p.name})" not in readme]
    assert not missing, f"README's course map does not link {missing}"
