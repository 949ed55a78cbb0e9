"""The library's two floors: what a training loop imports stands without the course's lab.

The practitioner's floor (``clipping_lib.*``) must import with torch and numpy alone, so a
practitioner can ``pip install`` it into a training stack that has no matplotlib, no
widgets and no notebook machinery. The lab bench (``clipping_lib.lab``) may use them.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import clipping_lib

PACKAGE = Path(clipping_lib.__file__).parent
COURSE_ONLY = ["matplotlib", "ipywidgets", "PIL", "sklearn", "IPython", "scipy", "pandas"]


def practitioner_modules() -> list[str]:
    """Every module on the top floor: the package itself and its modules, lab excluded."""
    names = [
        info.name
        for info in pkgutil.iter_modules([str(PACKAGE)], "clipping_lib.")
        if info.name != "clipping_lib.lab"
    ]
    return ["clipping_lib", *sorted(names)]


def test_the_top_floor_holds_the_training_loop_modules_and_the_lab():
    public = {n.removeprefix("clipping_lib.") for n in practitioner_modules()[1:]}
    public = {n for n in public if not n.startswith("_")}
    assert public == {
        "adaptive", "clip", "distributed", "monitor", "per_sample", "recipes", "skip_step",
        "strategies",
    }  # fmt: skip
    assert (PACKAGE / "lab" / "__init__.py").is_file()


def test_no_practitioner_module_names_the_lab():
    """Checked on the source, so a lazy import inside a function is caught too."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.startswith("clipping_lib.lab") or n == "lab" for n in names) or (
                isinstance(node, ast.ImportFrom) and node.level and "lab" in (node.module or "")
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"the practitioner's floor imports the lab: {offenders}"


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
assert not any(m.startswith("clipping_lib.lab") for m in sys.modules), "the lab was imported"
print("ok", len({modules!r}))
"""


def test_every_practitioner_module_imports_without_the_course_dependencies():
    modules = practitioner_modules()
    script = BLOCKER.format(blocked=COURSE_ONLY, modules=modules)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"ok {len(modules)}"


def test_the_blocker_really_blocks():
    """The check above would pass vacuously if the blocker let a course module through."""
    script = BLOCKER.format(blocked=COURSE_ONLY, modules=["clipping_lib.lab.plots"])
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "blocked by the test" in result.stderr
