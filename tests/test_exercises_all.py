"""Every lesson's exercises, found by walking clipping_lib.lab.exercises: the checker's contract.

Each lesson module's own test file asserts its diagnoses (one wrong answer, one message);
this file asserts what every exercise owes a learner, so a new lesson gets it for free.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import clipping_lib.lab.exercises as exercises_package
from clipping_lib.lab.exercises import Exercise

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
LESSONS = sorted(
    info.name
    for info in pkgutil.iter_modules(exercises_package.__path__)
    if re.fullmatch(r"lesson\d\d", info.name)
)


def _exercises(lesson: str) -> dict[str, Exercise]:
    module = importlib.import_module(f"clipping_lib.lab.exercises.{lesson}")
    return {name: value for name, value in vars(module).items() if isinstance(value, Exercise)}


ALL = [(lesson, name) for lesson in LESSONS for name in sorted(_exercises(lesson))]


def stub(*args, **kwargs):
    ...  # your code here


def test_every_lesson_with_exercises_has_a_checker_module():
    with_exercises = {
        f"lesson{p.name[:2]}"
        for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
        if re.search(r"(?m)^### Exercise \d", p.read_text(encoding="utf-8").replace('"', "\n"))
    }
    assert with_exercises <= set(LESSONS), f"no checker module for {with_exercises - set(LESSONS)}"


@pytest.mark.parametrize(("lesson", "name"), ALL)
def test_a_stub_checks_the_reference_and_says_so(lesson, name, capsys):
    exercise = _exercises(lesson)[name]
    for unattempted in (..., None, stub):
        assert exercise.check(unattempted)
        assert "the reference solution was checked: ✓" in capsys.readouterr().out
    assert exercise.diagnose(exercise.reference) is None


@pytest.mark.parametrize(("lesson", "name"), ALL)
def test_every_exercise_says_what_it_verified_and_has_hints(lesson, name):
    exercise = _exercises(lesson)[name]
    assert exercise.verified.strip() and exercise.hints, f"{lesson}.{name}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_notebook_checks_each_exercise_of_its_module(lesson):
    notebook = next(NOTEBOOKS.glob(f"{lesson[-2:]}_*.ipynb"))
    code = "\n".join(
        "".join(c["source"])
        for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        if c["cell_type"] == "code"
    )
    for name in _exercises(lesson):
        assert f"{name}.check(" in code, f"{notebook.name} never calls {name}.check"
        assert f"{name}.solution()" in code, f"{notebook.name} never calls {name}.solution()"
