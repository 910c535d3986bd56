"""Grade exercises of the course pack: a student's stage function against the specification.

  zeta-ref grade --list                        the exercises, with difficulty and time
  zeta-ref grade --start DIR [EXERCISE ...]    copy the exercises' files into DIR to work on
  zeta-ref grade EXERCISE FILE.py              grade one file
  zeta-ref grade EXERCISE --all DIR            grade every .py file of DIR (one a student), one table

FILE.py defines the stage function under the specification's name (for exercise
numba_morton_encode: morton_encode). The grader holds it against the specification on
awkward inputs and on inputs drawn by hypothesis from a fixed seed (so a grade is
reproducible), checks properties any right answer has, and runs it inside whole passes of
zeta_attention through the backend registry. A failure shows the smallest failing input found,
the result got and expected, the common mistake that reproduces it and the decisions involved
(docs/decisions.md), and the recall of your selection beside the specification's.
With --all each file is graded in a process of its own, stopped after --time-limit seconds
(600 by default; one file only when the option is given), so that a file that never returns
is one line of the table. docs/course.md is the guide.

Exit status: 0 when every check passes (for --all: every file), 1 when one fails or a file
cannot be imported, 2 for bad options (one line saying why).
"""

from __future__ import annotations

import argparse
import os
import shutil

from .common import OptionError, check_range, output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="EXERCISE|FILE",
                   help="the exercise, then the file to grade (with --start: the exercises "
                        "to copy, all by default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list the exercises")
    mode.add_argument("--start", metavar="DIR",
                      help="copy the exercises' files (student versions) into DIR")
    mode.add_argument("--all", metavar="DIR", dest="folder",
                      help="grade every DIR/*.py for EXERCISE, one table")
    p.add_argument("--solutions", action="store_true",
                   help="with --start: copy the teacher's solutions instead")
    p.add_argument("--force", action="store_true",
                   help="with --start: overwrite files that exist in DIR")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    p.add_argument("--examples", type=int, default=None,
                   help="hypothesis examples per grade (default 60)")
    p.add_argument("--seed", type=int, default=0,
                   help="the seed hypothesis draws from (default 0: every grade the same)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop grading a file after SECONDS (it is graded in a process of its "
                        "own) and report it; default: 600 with --all, none for one file; "
                        "0: none")


def run(args) -> int:
    from ..course import catalog

    names = list(args.names)
    if args.examples is not None:
        check_range(args.examples, "--examples", 1, 10_000)
    check_range(args.seed, "--seed", 0, 2**32 - 1)
    if args.time_limit is not None and not (0 <= args.time_limit <= 86400):
        raise OptionError(f"--time-limit must be in [0, 86400] seconds (0: none); got "
                          f"{args.time_limit:g}")
    if args.json is not None:
        output_file(args.json, "--json")

    if args.list:
        if names:
            raise OptionError(f"--list takes no EXERCISE or FILE; got {' '.join(names)}")
        return _list(catalog, args.json)
    if args.solutions and args.start is None:
        raise OptionError("--solutions goes with --start DIR")
    if args.force and args.start is None:
        raise OptionError("--force goes with --start DIR")
    if args.start is not None:
        return _start(catalog, args.start, names, args.solutions, args.force)

    if not names:
        raise OptionError("expected EXERCISE FILE.py, EXERCISE --all DIR, --list or "
                          "--start DIR")
    exercise = _exercise(catalog, names[0])
    kwargs = {"seed": args.seed}
    if args.examples is not None:
        kwargs["examples"] = args.examples
    from ..course import grader

    if args.folder is not None:
        if len(names) != 1:
            raise OptionError(f"--all DIR grades one exercise: expected EXERCISE alone; got "
                              f"{' '.join(names)}")
        if not os.path.isdir(args.folder):
            raise OptionError(f"--all {args.folder}: no such folder")
        files = [f for f in sorted(os.listdir(args.folder))
                 if f.endswith(".py") and f != "__init__.py"]
        if not files:
            raise OptionError(f"--all {args.folder}: the folder holds no .py files")
        limit = grader.TIME_LIMIT if args.time_limit is None else args.time_limit or None
        grades = grader.grade_folder(exercise.name, args.folder, time_limit=limit, **kwargs)
        print(f"zeta-ref grade {exercise.name} --all {args.folder}: {len(grades)} file(s)\n")
        print(grader.table(grades))
        if args.json is not None:
            grader.to_json({"exercise": exercise.name, "folder": args.folder,
                            "passed": sum(g.passed for g in grades), "files": len(grades),
                            "grades": [g.as_dict() for g in grades]}, args.json)
        return 0 if all(g.passed for g in grades) else 1

    if len(names) != 2:
        raise OptionError(f"expected EXERCISE FILE.py; got {' '.join(names)}")
    path = names[1]
    if not os.path.exists(path):
        raise OptionError(f"{path}: no such file")
    if os.path.isdir(path):
        raise OptionError(f"{path}: is a folder (grade a folder with EXERCISE --all DIR)")
    if args.time_limit:  # a process of its own, stopped after the limit
        grade = grader.grade_file_limited(exercise.name, path, args.time_limit, **kwargs)
    else:
        grade = grader.grade_file(exercise.name, path, **kwargs)
    print(grade.text())
    if args.json is not None:
        grader.to_json(grade.as_dict(), args.json)
    return grade.status


def _exercise(catalog, name):
    try:
        return catalog.get_exercise(name)
    except ValueError as err:
        raise OptionError(str(err)) from None


def _list(catalog, json_path) -> int:
    rows = [(e.name, e.difficulty, f"{e.minutes} min", ", ".join(e.decisions),
             e.title.removeprefix(f"{e.name}, "))
            for e in catalog.EXERCISES.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("\nstart: zeta-ref grade --start DIR    grade: zeta-ref grade EXERCISE DIR/EXERCISE.py")
    if json_path is not None:
        from ..course.grader import to_json

        to_json([{"name": e.name, "function": e.function, "difficulty": e.difficulty,
                  "minutes": e.minutes, "decisions": list(e.decisions), "title": e.title}
                 for e in catalog.EXERCISES.values()], json_path)
    return 0


def _start(catalog, folder, names, solutions, force) -> int:
    chosen = [_exercise(catalog, n) for n in names] or list(catalog.EXERCISES.values())
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OptionError(f"--start {folder}: is a file; expected a folder")
    targets = [(e, os.path.join(folder, f"{e.name}.py")) for e in chosen]
    if not force:
        existing = [t for _, t in targets if os.path.exists(t)]
        if existing:
            raise OptionError(f"--start {folder}: {existing[0]} exists (--force overwrites)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OptionError(f"--start {folder}: cannot create the folder ({err.strerror})") \
            from None
    for e, target in targets:
        shutil.copyfile(e.solution_file if solutions else e.exercise_file, target)
        print(f"{target}  ({e.difficulty}, about {e.minutes} min)  grade: zeta-ref grade "
              f"{e.name} {target}")
    return 0
