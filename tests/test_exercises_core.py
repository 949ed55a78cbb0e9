"""clipping_lib.lab.exercises: the checker machinery every lesson's exercises use."""

from __future__ import annotations

import pytest
import torch

from clipping_lib.lab.exercises import Exercise, is_stub, tensor_mismatch


def reference(g: torch.Tensor, c: float) -> torch.Tensor:
    return g * (c / torch.clamp(torch.linalg.vector_norm(g), min=c))


def input_untouched(answer, ref):
    g = torch.tensor([3.0, 4.0])
    answer(g, 1.0)
    if not torch.equal(g, torch.tensor([3.0, 4.0])):
        return "your function changed its input: clip a copy."
    return None


def same_value(answer, ref):
    for c in (1.0, 10.0):
        g = torch.tensor([3.0, 4.0])
        message = tensor_mismatch(answer(g, c), ref(g, c), f"clip(g=[3, 4], c={c:g})")
        if message:
            return message
    return None


EXERCISE = Exercise(
    "Exercise", reference, [input_untouched, same_value], verified="exact", hints=["one", "two"]
)


def stub_ellipsis(g, c):
    """The learner's stub."""
    ...  # your code here


def stub_raises(g, c):
    raise NotImplementedError


def in_place(g, c):
    return g.mul_(c / torch.linalg.vector_norm(g))


def always_scales(g, c):
    return g * (c / torch.linalg.vector_norm(g))


def crashes(g, c):
    return g / undefined_name  # noqa: F821


@pytest.mark.parametrize("stub", [None, ..., stub_ellipsis, stub_raises])
def test_a_stub_checks_the_reference_and_says_so(stub, capsys):
    assert is_stub(stub)
    assert EXERCISE.check(stub)
    assert "still the stub" in capsys.readouterr().out


@pytest.mark.parametrize("answer", [reference, in_place, always_scales, crashes, torch.zeros(1)])
def test_an_attempt_is_not_a_stub(answer):
    assert not is_stub(answer)


def test_the_first_failing_check_gives_the_diagnosis_without_a_traceback(capsys):
    assert not EXERCISE.check(in_place)
    assert "changed its input" in capsys.readouterr().out
    assert not EXERCISE.check(always_scales)
    assert "largest difference" in capsys.readouterr().out
    assert not EXERCISE.check(crashes)
    assert "raised NameError" in capsys.readouterr().out


def test_a_correct_answer_passes(capsys):
    assert EXERCISE.check(reference)
    assert capsys.readouterr().out.startswith("✓ Correct: exact")


def test_a_reference_that_fails_is_the_course_bug():
    broken = Exercise("broken", in_place, [input_untouched], verified="x")
    with pytest.raises(AssertionError, match="reference fails"):
        broken.check(None)


def test_hints_in_order_then_by_number(capsys):
    exercise = Exercise("e", reference, [same_value], verified="x", hints=["one", "two"])
    exercise.hint()
    exercise.hint()
    exercise.hint()
    exercise.hint(1)
    out = capsys.readouterr().out.splitlines()
    assert out == ["Hint 1 of 2: one", "Hint 2 of 2: two", "Hint 2 of 2: two", "Hint 1 of 2: one"]
    with pytest.raises(ValueError, match="n must be"):
        exercise.hint(3)


def test_solution_prints_the_reference_source(capsys):
    EXERCISE.solution()
    assert "torch.clamp(torch.linalg.vector_norm(g), min=c)" in capsys.readouterr().out


def test_tensor_mismatch_names_what_differs():
    t = torch.ones(3)
    assert tensor_mismatch(t.clone(), t) is None
    assert "shape" in tensor_mismatch(torch.ones(2), t)
    assert "dtype" in tensor_mismatch(t.double(), t)
    assert "should be a tensor" in tensor_mismatch(3.0, t)
    assert "0.5" in tensor_mismatch(t + 0.5, t)


def test_an_exercise_needs_a_check():
    with pytest.raises(ValueError, match="checks"):
        Exercise("e", reference, [], verified="x")
