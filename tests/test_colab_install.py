"""Every lesson on Colab: its first cell installs the course library there, and only there.

Colab cannot be reached from a test, so this is the closest stand-in:

* **Every lesson's first code cell** is the one-line install, guarded by
  ``"google.colab" in sys.modules``, of ``clipping-lib[course]`` (lesson 10:
  ``[course,tools]``) from the course's repository with ``git+https``.
* **Outside Colab it does nothing**: each first cell runs in IPython with no
  ``google.colab`` module, and no shell command is run.
* **On a Colab-like Python it installs the library**: a fresh virtual environment sees
  this machine's packages (standing in for Colab's preinstalled torch, numpy, matplotlib,
  ipywidgets, scikit-learn) *except* ``clipping_lib``, which it cannot import at first,
  with a current pip as Colab has; a
  stub ``google.colab`` module is imported as Colab's kernel does; lesson 00's first cell
  runs in IPython with the repository's URL rewritten to this checkout
  (``git+file://``, so pip clones and builds it exactly as it would from GitHub); then
  ``clipping_lib``, ``clipping_lib.lab`` and a panel import from the environment.

What it does not prove: that GitHub serves this commit (the clone is of the local HEAD,
so uncommitted changes are not in it), that Colab's own package versions satisfy the
requirements (here they are this machine's), that the ``tools`` extra installs on Colab
(its resolution is not run), or that the lessons then run on Colab's hardware.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPOSITORY = "git+https://github.com/gradient-clipping-course/course"
INSTALL = re.compile(
    r'^import sys\n\nif "google\.colab" in sys\.modules:  # on Colab: [^\n]+\n'
    r'    !pip install -q "clipping-lib\[(?P<extras>[a-z,]+)\] @ '
    + re.escape(REPOSITORY)
    + r'"\n?$'
)


def first_code_cell(path: Path) -> str:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_first_cell_installs_the_library_on_colab(path):
    match = INSTALL.match(first_code_cell(path))
    assert match, f"{path.name}: the first code cell is not the Colab install line"
    extras = match["extras"].split(",")
    assert "course" in extras
    assert ("tools" in extras) == path.name.startswith("10_"), extras


RUN_CELLS = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell

calls = []
shell = InteractiveShell.instance()
shell.system = calls.append  # what `!pip ...` would run
for source in json.loads(sys.stdin.read()):
    result = shell.run_cell(source)
    result.raise_error()
print(json.dumps({"calls": calls, "colab": "google.colab" in sys.modules}))
"""


def test_first_cells_do_nothing_outside_colab():
    sources = [first_code_cell(path) for path in LESSONS]
    result = subprocess.run(
        [sys.executable, "-c", RUN_CELLS], input=json.dumps(sources), capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"calls": [], "colab": False}


def _colab_like_environment(root: Path) -> Path:
    """A venv that sees this machine's packages, but not clipping_lib, and a google.colab
    stub; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    # Colab's pip is current; the one venv bundles may be too old for `name @ git+file://`.
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, timeout=300
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    preinstalled = root / "preinstalled"  # outside the venv: pip never uninstalls from it
    preinstalled.mkdir()
    system = Path(sysconfig.get_paths()["purelib"])
    for entry in system.iterdir():
        if "clipping" in entry.name.lower() or entry.name.startswith("__editable__"):
            continue
        if entry.suffix == ".pth" or entry.name in {"pip", "setuptools", "_distutils_hack"}:
            continue
        (preinstalled / entry.name).symlink_to(entry)
    (Path(purelib) / "preinstalled.pth").write_text(f"{preinstalled}\n")
    stub = Path(purelib) / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stands in for Colab\'s google.colab in a test."""\n')
    return python


def test_first_cell_installs_the_library_in_a_colab_like_python(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the checkout as pip clones GitHub")
    python = _colab_like_environment(tmp_path)
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    probe = "import importlib.util as u; print(u.find_spec('clipping_lib') is None)"
    before = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
        check=True,
    )  # fmt: skip
    assert before.stdout.strip() == "True", "clipping_lib is importable before the install"

    cell = first_code_cell(LESSONS[0]).replace(REPOSITORY, f"git+file://{REPO}")
    script = textwrap.dedent(f"""
        import google.colab  # Colab's kernel has imported it before any cell runs
        from IPython.core.interactiveshell import InteractiveShell
        InteractiveShell.instance().run_cell({cell!r}).raise_error()
        import clipping_lib, clipping_lib.lab, clipping_lib.lab.panels.cliff
        print(clipping_lib.__file__)
    """)
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installed = Path(result.stdout.strip().splitlines()[-1])
    assert (tmp_path / "venv") in installed.parents, f"imported from {installed}"
