"""Exercise checkers, one module per lesson (``lesson01``, ``lesson04``, ...).

Each lesson module defines its :class:`Exercise` objects (``ex1``, ``ex2``, ...); a
notebook imports them with ``from clipping_lib.lab.exercises.lesson04 import ex1, ex2``.
The machinery is in :mod:`clipping_lib.lab.exercises._core`.
"""

from clipping_lib.lab.exercises._core import Exercise, Verdict, is_stub, tensor_mismatch

__all__ = ["Exercise", "Verdict", "is_stub", "tensor_mismatch"]
