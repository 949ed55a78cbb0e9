"""Lesson 00's setup report: which versions run the course, and where the library comes from."""

from __future__ import annotations

import platform
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

import clipping_lib

STORED_WITH = "2.13.0"  # the torch version the stored outputs were executed with

__all__ = ["STORED_WITH", "describe_environment"]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def describe_environment(notebooks: Path | None = None) -> dict[str, str]:
    """Print and return the versions that matter, the device, and where clipping_lib is from.

    Warns when torch differs from the version the stored outputs were executed with: the
    course runs on torch 2.6 or newer, but printed digits may then differ.
    """
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "matplotlib": _version("matplotlib"),
        "ipywidgets": _version("ipywidgets"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    library = Path(clipping_lib.__file__).resolve().parent
    here = (notebooks or Path.cwd()).resolve().parent
    report["library"] = "this repository" if library.parent == here else "an installed copy"
    for name, value in report.items():
        print(f"{name:>11}  {value}")
    if not torch.__version__.startswith(STORED_WITH):
        warnings.warn(
            f"The stored outputs were executed with torch {STORED_WITH}; you have "
            f"{torch.__version__}. The course runs with torch 2.6 or newer, but numbers "
            "printed by your run may differ from the stored ones in the last digits.",
            stacklevel=2,
        )
    return report
