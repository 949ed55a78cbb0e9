r"""Exercises that answer back: ``check(answer)``, ``hint(n)`` and ``solution()``.

An :class:`Exercise` holds a reference solution (written once, here in the lab or in the
library, never copied into a notebook), a list of **checks** and a list of hints. A
check is a function ``check(answer, reference) -> str | None``: it runs the learner's
answer on cases of its own and returns ``None`` when the answer passes, or one specific,
friendly diagnosis ("your function changed its input: clip a copy") when it does not.
The checks run in order and the first diagnosis is the one shown, so put the most
telling checks first and the plain "wrong value" check last.

How a notebook uses one (the pattern every lesson follows)::

    ### Exercise 1 · ...              <- markdown: the statement
    def my_clip(g, c):                <- the learner's cell: a stub
        ...  # your code here
    ex1.check(my_clip)                <- the check cell
    ex1.hint()  /  ex1.solution()     <- on request; the solution cell is collapsed

``check`` never raises for a wrong answer: it prints ``✓`` and what was verified, or
``✗`` and the diagnosis, and returns whether the answer passed. While the learner's cell
still holds the stub (``...``, ``None``, or a function that raises
``NotImplementedError``), ``check`` checks the *reference* instead and says so; a
reference that fails its own checks is a bug in the course, and that raises
``AssertionError``, so nbval, which executes the stored notebooks, tests every checker.
"""

from __future__ import annotations

import dis
import inspect
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch

Check = Callable[[Any, Any], "str | None"]

__all__ = ["Check", "Exercise", "Verdict", "is_stub", "tensor_mismatch"]

_DO_NOTHING = {"RESUME", "NOP", "LOAD_CONST", "RETURN_VALUE", "RETURN_CONST", "CACHE"}


def is_stub(answer: Any) -> bool:
    """Whether ``answer`` is still the notebook's stub (nothing attempted yet).

    A stub is ``None``, ``...``, or a function whose body is only ``...``/``pass`` (a
    docstring and comments allowed) or only raises ``NotImplementedError``. Read from the
    bytecode, so it works wherever the function was defined.
    """
    if answer is None or answer is Ellipsis:
        return True
    code = getattr(answer, "__code__", None)
    if code is None:
        return False
    if code.co_names == ("NotImplementedError",):
        return True
    return all(  # the body does nothing but return None
        op.opname in _DO_NOTHING and (op.opname != "LOAD_CONST" or op.argval is None)
        for op in dis.get_instructions(code)
    )


def tensor_mismatch(
    got: Any, expected: torch.Tensor, what: str = "the result", rtol: float = 1e-5,
    atol: float = 1e-7,
) -> str | None:  # fmt: skip
    """``None`` if ``got`` is a tensor equal to ``expected`` (within tolerance), else why not.

    Says what differs the way Karpathy's ``cmp`` does: the type, the shape, the dtype,
    or the largest absolute difference.
    """
    if not isinstance(got, torch.Tensor):
        return f"{what} should be a tensor, but it is a {type(got).__name__}."
    if got.shape != expected.shape:
        return f"{what} has shape {tuple(got.shape)}; expected {tuple(expected.shape)}."
    if got.dtype != expected.dtype:
        return f"{what} has dtype {got.dtype}; expected {expected.dtype}."
    if torch.equal(got, expected):
        return None
    same_nan = torch.isnan(got) == torch.isnan(expected)
    if bool(same_nan.all()) and torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
        return None
    difference = (got.double() - expected.double()).abs().nan_to_num(float("inf")).max().item()
    return f"{what} is off: the largest difference from the expected value is {difference:.3g}."


class Verdict:
    """Whether an answer passed: truthy when it did. A notebook shows nothing for it, since
    ``check`` has already printed what it found."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed})"

    def _ipython_display_(self) -> None:
        """Display nothing: the check's message is the output."""


class Exercise:
    """One exercise: a reference, checks that diagnose, hints, and the solution on request.

    Args:
        title: the exercise's name, as its heading gives it ("Exercise 1 · ...").
        reference: the reference answer (a function, a tensor, a number, ...).
        checks: functions ``check(answer, reference) -> str | None``, run in order; the
            first that returns a message is the diagnosis shown.
        verified: what passing means, said after the ``✓`` ("equal to
            ``clip_grad_norm_`` on 6 cases, input untouched, exact below the threshold").
        hints: the hints, from gentle to nearly the answer.
    """

    def __init__(
        self,
        title: str,
        reference: Any,
        checks: Sequence[Check],
        *,
        verified: str,
        hints: Sequence[str] = (),
    ) -> None:
        if not checks:
            raise ValueError("checks must name at least one check")
        self.title = title
        self.reference = reference
        self.checks = list(checks)
        self.verified = verified
        self.hints = list(hints)
        self._next_hint = 0

    def diagnose(self, answer: Any) -> str | None:
        """The first check's diagnosis of ``answer``, or ``None`` when every check passes.

        An exception raised by the learner's code becomes a diagnosis too, so a learner
        never meets a traceback from the checker.
        """
        for check in self.checks:
            try:
                message = check(answer, self.reference)
            except NotImplementedError:
                return "the function still raises NotImplementedError: replace the stub."
            except Exception as error:  # the learner's code may raise anything
                return f"your answer raised {type(error).__name__}: {error}."
            if message:
                return message
        return None

    def check(self, answer: Any) -> Verdict:
        """Check ``answer``; print ``✓`` and what was verified, or ``✗`` and a diagnosis.

        Returns whether it passed, as a :class:`Verdict` (truthy when it passed). With the
        stub still in place the reference is checked instead (and a failing reference
        raises: that is the course's bug, not yours).
        """
        if is_stub(answer):
            message = self.diagnose(self.reference)
            if message is not None:
                raise AssertionError(f"{self.title}: the reference fails its check: {message}")
            print(
                f"Your answer is still the stub, so the reference solution was checked: "
                f"✓ {self.verified}. Write yours above and run this cell again."
            )
            return Verdict(True)
        message = self.diagnose(answer)
        if message is None:
            print(f"✓ Correct: {self.verified}.")
            return Verdict(True)
        more = " Stuck? Call .hint() for a hint." if self.hints else ""
        print(f"✗ Not yet: {message}{more}")
        return Verdict(False)

    def hint(self, n: int | None = None) -> None:
        """Print hint ``n`` (from 1), or the next one on each call."""
        if not self.hints:
            print("This exercise has no hints: read the statement again, then .solution().")
            return
        if n is None:
            n = min(self._next_hint, len(self.hints) - 1) + 1
            self._next_hint += 1
        if not 1 <= n <= len(self.hints):
            raise ValueError(f"n must be between 1 and {len(self.hints)}, got {n}")
        print(f"Hint {n} of {len(self.hints)}: {self.hints[n - 1]}")

    def solution(self) -> None:
        """Print the reference: its source for a function, its value (6 digits) otherwise."""
        if callable(self.reference):
            try:
                print(textwrap.dedent(inspect.getsource(self.reference)).rstrip())
            except (OSError, TypeError):  # defined where no source is kept
                print(repr(self.reference))
        elif isinstance(self.reference, float):
            print(f"{self.reference:.6g}")
        else:
            print(repr(self.reference))

    def __repr__(self) -> str:
        return f"Exercise({self.title!r}, {len(self.checks)} checks, {len(self.hints)} hints)"
