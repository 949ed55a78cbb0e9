"""How long a lesson takes to study, by one stated, reproducible rule.

A learner reads prose, reads and runs code, and works the exercises. The rule counts each:

    minutes = words of prose / 110  +  lines of code / 12  +  8 per exercise

rounded to the nearest 5 minutes (at least 5). 110 words a minute is a careful reading
speed for technical text with math (well below the 200-250 of light prose); 12 lines of
code a minute is reading, running and looking at the output of a short cell; 8 minutes is
an exercise tried, checked and fixed once. Words are counted in Markdown cells, code lines
are the non-blank, non-comment lines of code cells (the Colab install cell excluded), and
an exercise is a ``### Exercise N`` heading. Each notebook's header states the result
("**Reading time:** about N minutes"), and a test keeps it true.

    python -m clipping_lib.lab.reading_time notebooks/*.ipynb          # report
    python -m clipping_lib.lab.reading_time --write notebooks/*.ipynb  # update the headers
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

WORDS_PER_MINUTE = 110
CODE_LINES_PER_MINUTE = 12
MINUTES_PER_EXERCISE = 8

_WORD = re.compile(r"[A-Za-z0-9']+")
_EXERCISE = re.compile(r"(?m)^###\s+Exercise\s+\d+")
STATED = re.compile(r"\*\*Reading time:\*\*\s+about\s+(\d+)\s+minutes")

__all__ = ["STATED", "reading_minutes", "stated_minutes", "study_counts", "write_stated_minutes"]

HEADER = (
    "**Reading time:** about {minutes} minutes (the course's rule: words of prose / 110 + "
    "lines of code / 12 + 8 per exercise; see the README)."
)


def _cells(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def study_counts(path: str | Path) -> dict[str, int]:
    """Words of prose, lines of code and exercises in the notebook at ``path``."""
    words = lines = exercises = 0
    for cell in _cells(path):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            words += len(_WORD.findall(source))
            exercises += len(_EXERCISE.findall(source))
        elif cell["cell_type"] == "code" and "google.colab" not in source:
            lines += sum(
                1
                for line in source.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            )
    return {"words": words, "code_lines": lines, "exercises": exercises}


def reading_minutes(path: str | Path) -> int:
    """The rule's study time for the notebook at ``path``, rounded to 5 minutes."""
    counts = study_counts(path)
    minutes = (
        counts["words"] / WORDS_PER_MINUTE
        + counts["code_lines"] / CODE_LINES_PER_MINUTE
        + counts["exercises"] * MINUTES_PER_EXERCISE
    )
    return max(5, 5 * round(minutes / 5))


def stated_minutes(path: str | Path) -> int | None:
    """The reading time the notebook's first Markdown cell states, if it states one."""
    first = next((c for c in _cells(path) if c["cell_type"] == "markdown"), None)
    match = STATED.search("".join(first["source"])) if first else None
    return int(match.group(1)) if match else None


def write_stated_minutes(path: str | Path) -> int:
    """Put the rule's reading time into the notebook's first Markdown cell; returns it.

    The line replaces an earlier statement, or goes after the title. The header's own
    words count too, so the time is computed with the line in place.
    """
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    first = next(c for c in notebook["cells"] if c["cell_type"] == "markdown")
    lines = "".join(first["source"]).splitlines()
    lines = [line for line in lines if not line.startswith("**Reading time:**")]
    minutes = 0
    for _ in range(3):  # the header's own words may move the rounding once
        text = "\n".join([lines[0], "", HEADER.format(minutes=minutes), *lines[1:]])
        text = text.replace("\n\n\n", "\n\n").rstrip("\n")
        first["source"] = text.splitlines(keepends=True)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", "utf-8")
        if reading_minutes(path) == minutes:
            break
        minutes = reading_minutes(path)
    return minutes


if __name__ == "__main__":
    write = "--write" in sys.argv[1:]
    for name in (a for a in sys.argv[1:] if a != "--write"):
        if write:
            write_stated_minutes(name)
        counts = study_counts(name)
        print(
            f"{Path(name).name}: about {reading_minutes(name)} minutes {counts}"
            f" (stated: {stated_minutes(name)})"
        )
