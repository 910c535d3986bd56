"""Student versions of the exercises, generated from the teacher's solutions by markers.

A solution file (``zeta_ref/course/solutions/NAME.py``) is a complete, working answer. Inside a
function body, the lines a student must write sit between two marker comments::

    def morton_encode(u, bits, *, check=True):
        \"\"\"(the specification's docstring)\"\"\"
        if check:                                    # kept: given to the student
            u, bits = check_coordinates(u, bits)
        # BEGIN SOLUTION: interleave the bits
        # Hint: bit t of coordinate j lands at bit t * d + (d - 1 - j).
        ...                                          # the answer: removed
        # END SOLUTION

The student version (``zeta_ref/course/exercises/NAME.py``) keeps everything outside the
markers. Each marked block becomes, at the block's indentation, the block's ``# Hint:`` lines
(kept word for word, with any comment lines that continue them) and one line
``raise NotImplementedError("<the text after 'BEGIN SOLUTION:'>")``. The markers must sit
inside a function body (indented): a ``raise`` at module level would stop the student's file
from importing at all.

The student versions are committed, and tests/test_grade.py checks that generating them again
from the solutions gives exactly the committed files. After editing a solution, regenerate::

    python -m zeta_ref.course.markers
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOLUTIONS = HERE / "solutions"
EXERCISES = HERE / "exercises"

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?::\s*(?P<text>.*?))?\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
HINT = re.compile(r"^[ \t]*# Hint:")
HINT_GOES_ON = re.compile(r"^[ \t]*#   ")  # a hint's continuation lines: "#   more words"
DEFAULT_TEXT = "write this part"


class MarkerError(ValueError):
    """A solution file whose markers cannot be turned into a student version."""


def student_version(text: str, name: str = "<solution>") -> str:
    """The student's file made from the solution ``text`` (see the module docstring)."""
    out: list[str] = []
    block: list[str] | None = None  # the kept hint lines of the open block
    head = None  # (line number, indentation, message) of the open block
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if block is None:
            if end:
                raise MarkerError(f"{name}:{number}: '# END SOLUTION' without a BEGIN")
            if begin:
                if not begin.group("indent"):
                    raise MarkerError(f"{name}:{number}: a solution block must sit inside a "
                                      f"function body (indented), not at module level")
                head = (number, begin.group("indent"), begin.group("text") or DEFAULT_TEXT)
                block = []
                continue
            out.append(line)
            continue
        if begin:
            raise MarkerError(f"{name}:{number}: '# BEGIN SOLUTION' inside an open block "
                              f"(opened at line {head[0]})")
        if end:
            _, indent, message = head
            out.extend(block)
            out.append(f"{indent}raise NotImplementedError({message!r})\n")
            block = head = None
            continue
        # a hint, or a comment line that continues the hint just kept, stays
        if HINT.match(line) or (block and HINT_GOES_ON.match(line)):
            block.append(line)
    if block is not None:
        raise MarkerError(f"{name}:{head[0]}: '# BEGIN SOLUTION' never closed")
    return "".join(out)


def solution_files() -> list[Path]:
    """The teacher's solution files, by name."""
    return sorted(p for p in SOLUTIONS.glob("*.py") if p.name != "__init__.py")


def generated() -> dict[str, str]:
    """``{file name: student version}`` for every solution file."""
    return {p.name: student_version(p.read_text(encoding="utf-8"), p.name)
            for p in solution_files()}


def write_exercises(folder: Path = EXERCISES) -> list[Path]:
    """Write every student version into ``folder``; returns the paths written."""
    written = []
    for name, text in generated().items():
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m zeta_ref.course.markers
    for path in write_exercises():
        print(f"wrote {path}")
