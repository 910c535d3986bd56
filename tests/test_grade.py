"""The course pack (zeta_ref/course) and ``zeta-ref grade`` (zeta_ref/tools/grade.py).

- the files: student versions generated from the solutions by markers, the specification's
  signatures and docstrings, headers, solutions written without the function they implement;
- every reference solution passes;
- small wrong versions fail, and the feedback names their mistake and its decision;
- bad options and broken files: one clear line, the documented exit status;
- --json, --all, --start, --list.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

from zeta_ref.backends import REGISTRY
from zeta_ref.course import catalog, grader, markers

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(catalog.EXERCISES)
FEW = "20"  # hypothesis examples in the tests of failing files: a failure is found early



def _load(path, name):
    spec = importlib.util.spec_from_file_location(f"test_grade_{name}_{Path(path).parent.name}",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the files


def test_student_versions_are_the_solutions_with_the_answers_taken_out():
    made = markers.generated()
    committed = {p.name for p in markers.EXERCISES.glob("*.py") if p.name != "__init__.py"}
    assert set(made) == committed == {f"{n}.py" for n in NAMES}
    for name, text in made.items():
        assert (markers.EXERCISES / name).read_text(encoding="utf-8") == text, (
            f"exercises/{name} is stale: run python -m zeta_ref.course.markers")
        assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text


def test_markers_keep_hints_and_refuse_broken_blocks():
    text = ("def f(x):\n    y = 1\n    # BEGIN SOLUTION: add one\n    # Hint: x + y\n"
            "    #   (a continued hint)\n    z = x + y\n    # a teacher's note\n    return z\n"
            "    # END SOLUTION\n")
    assert markers.student_version(text) == (
        "def f(x):\n    y = 1\n    # Hint: x + y\n    #   (a continued hint)\n"
        "    raise NotImplementedError('add one')\n")
    for broken, message in [("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "module level"),
                            ("def f():\n    # BEGIN SOLUTION\n    pass\n", "never closed"),
                            ("def f():\n    # END SOLUTION\n", "without a BEGIN"),
                            ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n",
                             "inside an open block")]:
        with pytest.raises(markers.MarkerError, match=message):
            markers.student_version(broken)


@pytest.mark.parametrize("name", NAMES)
def test_each_exercise_has_the_specifications_signature_docstring_and_a_header(name):
    ex = catalog.EXERCISES[name]
    assert ex.difficulty in ("easy", "medium", "hard") and 5 <= ex.minutes <= 60
    assert all(d in catalog.DECISIONS for d in ex.decisions)
    assert ex.header["specification"] == f"{ex.spec.__module__}.{ex.spec.__name__}"
    for path in (ex.solution_file, ex.exercise_file):
        fn = getattr(_load(path, name), ex.function)
        assert inspect.signature(fn) == inspect.signature(ex.spec), path
        assert inspect.getdoc(fn) == inspect.getdoc(ex.spec), path
        text = path.read_text(encoding="utf-8")
        assert f"Grade it: zeta-ref grade {name} {name}.py" in text
        # written, not borrowed: the solution never calls the specification's function
        assert grader.borrowed(path, fn, ex) is None


def test_decisions_are_those_of_the_decisions_page():
    page = (ROOT / "docs" / "decisions.md").read_text(encoding="utf-8")
    rows = {m.group(1): (m.group(2).strip(), m.group(3).strip().replace("`", ""))
            for m in re.finditer(r"^\| (D\d+) \| ([^|]+) \| ([^|]+) \|", page, re.MULTILINE)}
    assert rows == catalog.DECISIONS


# ------------------------------------------------------------------ every solution passes


@pytest.mark.parametrize("name", NAMES)
def test_every_reference_solution_passes(name, zeta_ref_cli):
    code, out, err = zeta_ref_cli(["grade", name, str(catalog.EXERCISES[name].solution_file)])
    assert code == 0, out + err
    assert "result: PASS" in out and "FAIL" not in out
    assert not any(n.startswith("student-") for n in REGISTRY)  # the swapped backend is gone


def test_an_untouched_student_version_fails_as_not_written_yet(zeta_ref_cli):
    code, out, _ = zeta_ref_cli(["grade", "morton_encode", str(markers.EXERCISES / "morton_encode.py"),
                          "--examples", FEW])
    assert code == 1 and "not written yet: NotImplementedError" in out


@pytest.mark.parametrize("name", ["quantize", "sort_keys"])
def test_a_function_that_raises_on_every_input_passes_no_property(name, zeta_ref_cli):
    """The properties of a right answer cannot hold of a function that answers nothing: the
    untouched student version fails that check too, saying why (not a vacuous pass)."""
    code, out, _ = zeta_ref_cli(["grade", name, str(markers.EXERCISES / f"{name}.py"),
                                 "--examples", FEW])
    line = next(row for row in out.splitlines() if "properties of any right answer" in row)
    assert code == 1 and line.lstrip().startswith("FAIL") and "not written yet" in line, out


# ------------------------------------------------------------------ common mistakes named

MORTON_LSB_FIRST = '''
import numpy as np

def morton_encode(u, bits: int, *, check: bool = True):
    u = np.asarray(u).astype(np.uint64)
    d = u.shape[-1]
    code = np.zeros(u.shape[:-1], dtype=np.uint64)
    for t in range(bits):  # the bit groups in the wrong order: the lowest first
        for j in range(d):
            code = (code << np.uint64(1)) | ((u[..., j] >> np.uint64(t)) & np.uint64(1))
    return code
'''

QUANTIZE_ROUNDED = '''
import math
import numpy as np
from zeta_ref.stages.quantize import squash

def quantize(x, bits: int, squash_method: str = "sigmoid", clip_range=(-4.0, 4.0)):
    s = squash(x, squash_method, clip_range)
    cells = np.round(s * math.ldexp(1.0, bits)).astype(np.uint64)  # round, not floor
    return np.minimum(cells, np.uint64((1 << bits) - 1))
'''


def _edit(name, old, new):
    """The solution of ``name`` with one line changed."""
    text = catalog.EXERCISES[name].solution_file.read_text(encoding="utf-8")
    assert old in text, old
    return text.replace(old, new)


WRONG = {
    "morton_lsb_first": ("morton_encode", lambda: MORTON_LSB_FIRST,
                         ["the least significant bit group first (D3)", "0b01 (1)"]),
    "morton_dims_reversed": ("morton_encode", lambda: _edit(
        "morton_encode", "np.uint64(t * d + (d - 1 - j))", "np.uint64(t * d + j)"),
        ["the dimension order reversed", "(D3)"]),
    "quantize_round": ("quantize", lambda: QUANTIZE_ROUNDED,
                       ["cells rounded to the nearest instead of floored (D2, D13)"]),
    "quantize_top_wraps": ("quantize", lambda: _edit(
        "quantize", "return np.minimum(cells, last)", "return cells & last"),
        ["wrapped round to cell 0", "(D2)"]),
    "sort_unstable": ("sort_keys", lambda: _edit(
        "sort_keys", "perm = np.lexsort((position, codes), axis=-1)",
        "perm = np.argsort(codes, axis=-1, kind='quicksort')"),
        ["your sort is not stable (D10)"]),
    "insertion_pool_one_long": ("insertion_points", lambda: _edit(
        "insertion_points", "codes[r][perm[r] < pool_len[i]]", "codes[r][perm[r] <= pool_len[i]]"),
        ["pools one key long", "(D4)", "FAIL  the future never changes the past"]),
    "window_masked_afterwards": ("neighbour_window", lambda: _edit(
        "neighbour_window", "            out[r, i, :taken.size] = taken\n",
        "            out[r, i, :taken.size] = taken\n").replace(
        "visible = perm[r] < pool_len[i]  # (N,)", "visible = perm[r] < n  # (N,)").replace(
        "out[r, i, :taken.size] = taken", "out[r, i, :taken.size] = np.where("
        "taken < pool_len[i], taken, -1)"),
        ["later keys masked afterwards", "(D4)", "FAIL  the future never changes the past"]),
    "window_not_slid": ("neighbour_window", lambda: _edit(
        "neighbour_window", "start = max(min(p - width // 2, size - width), 0)",
        "start = p - width // 2\n            out[r, i] = [pool_keys[s] if 0 <= s < size else -1"
        " for s in range(start, start + width)]\n            continue"),
        ["a window not slid inside the pool", "(D11)", "pool ranks"]),
    "means_exclusive": ("history_means", lambda: _edit(
        "history_means", "mean = running / count[:, None]  # (..., N, d)",
        "mean = (running - x) / np.maximum(count - 1, 1)[:, None]"),
        ["the positions j < i (the query's own left out) (D8)"]),
    "mean_term_left_out": ("topk_attention", lambda: _edit(
        "topk_attention", "    if mean_k is not None:\n", "    if False:  # mean term left out\n"),
        ["mistake   no mean term (D8)"]),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_a_common_mistake_fails_and_is_named(case, tmp_path, zeta_ref_cli):
    name, source, wanted = WRONG[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source(), encoding="utf-8")
    code, out, err = zeta_ref_cli(["grade", name, str(path), "--examples", FEW])
    assert code == 1, out + err
    assert "result: FAIL" in out and "the smallest failing input" in out
    for text in wanted:
        assert text in out, f"{text!r} not in:\n{out}"
    assert "recall@k" in out and "Traceback" not in out + err


def test_a_numba_exercise_without_a_compiled_kernel_fails(tmp_path, zeta_ref_cli):
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT: nothing is compiled, so the check is left out")
    path = tmp_path / "plain.py"
    path.write_text(_edit("numba_morton_encode", "@nb.njit(cache=False)\n", ""),
                    encoding="utf-8")
    code, out, _ = zeta_ref_cli(["grade", "numba_morton_encode", str(path), "--examples", FEW])
    assert code == 1
    assert "FAIL  compiled with Numba" in out and "@numba.njit" in out
    assert "PASS  hypothesis inputs" in out  # right codes, but not a twin


def test_a_file_that_imports_the_specifications_function_fails(tmp_path, zeta_ref_cli):
    path = tmp_path / "copy.py"
    path.write_text("from zeta_ref.stages.sort import sort_keys  # noqa: F401\n")
    code, out, _ = zeta_ref_cli(["grade", "sort_keys", str(path), "--examples", FEW])
    assert code == 1 and "FAIL  own work" in out and "imports sort_keys" in out


def test_a_grade_is_reproducible(tmp_path):
    path = tmp_path / "lsb.py"
    path.write_text(MORTON_LSB_FIRST)
    one, two = (grader.grade_file("morton_encode", path, examples=20).as_dict()
                for _ in range(2))
    one.pop("seconds"), two.pop("seconds")
    assert one == two


# ------------------------------------------------------------------ bad options, broken files


@pytest.mark.parametrize("argv, message", [
    (["grade", "mortn", "x.py"], "no exercise 'mortn'; the exercises are: quantize,"),
    (["grade", "morton_encode", "no/such/file.py"], "no/such/file.py: no such file"),
    (["grade", "morton_encode"], "expected EXERCISE FILE.py"),
    (["grade"], "expected EXERCISE FILE.py, EXERCISE --all DIR, --list or --start DIR"),
    (["grade", "--list", "morton_encode"], "--list takes no EXERCISE"),
    (["grade", "--solutions"], "--solutions goes with --start DIR"),
    (["grade", "morton_encode", "x.py", "--examples", "0"], "--examples must be in"),
    (["grade", "morton_encode", "--all", "no/such/dir"], "no such folder"),
    (["grade", "morton_encode", "x.py", "--time-limit", "-1"], "--time-limit must be in"),
])
def test_bad_options_are_one_line_with_status_2(argv, message, zeta_ref_cli):
    code, out, err = zeta_ref_cli(argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("source, message", [
    ("import numpy as np\n\ndef morton(u, bits):\n    return u\n",
     "defines no function 'morton_encode'"),
    ("import numpy as np\nx = 1 / 0\n",
     "cannot be imported: ZeroDivisionError: division by zero (broken.py, line 2)"),
    ("def morton_encode(u, bits\n", "cannot be imported: SyntaxError at line 1"),
    ("morton_encode = 3\n", "morton_encode is a int, not a function"),
])
def test_a_file_that_cannot_be_graded_is_one_clear_line_with_status_1(source, message, tmp_path,
                                                                        zeta_ref_cli):
    path = tmp_path / "broken.py"
    path.write_text(source)
    code, out, err = zeta_ref_cli(["grade", "morton_encode", str(path)])
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], out


# ------------------------------------------------------------------ --json, --all, --start


def test_json_of_one_grade(tmp_path, zeta_ref_cli):
    path, report = tmp_path / "lsb.py", tmp_path / "out" / "grade.json"
    path.write_text(MORTON_LSB_FIRST)
    code, _, _ = zeta_ref_cli(["grade", "morton_encode", str(path), "--examples", FEW,
                        "--json", str(report)])
    data = json.loads(report.read_text())
    assert code == 1 and data["status"] == 1 and data["passed"] is False
    assert {c["name"] for c in data["checks"]} >= {"awkward inputs", "hypothesis inputs",
                                                   "whole pass (backend registry)"}
    assert data["failure"]["mistake"]["text"] == "the least significant bit group first"
    assert data["failure"]["field"] == "q_codes" and data["failure"]["got"].startswith("0b")
    assert 0 <= data["recall"]["yours"] < data["recall"]["specification"] <= 1


def test_all_grades_a_folder_into_one_table(tmp_path, zeta_ref_cli):
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "alice.py").write_text(catalog.EXERCISES["morton_encode"].solution_file.read_text())
    (folder / "bob.py").write_text(MORTON_LSB_FIRST)
    (folder / "carol.py").write_text("raise RuntimeError('not finished')\n")
    report = tmp_path / "class.json"
    code, out, _ = zeta_ref_cli(["grade", "morton_encode", "--all", str(folder), "--examples", FEW,
                          "--json", str(report)])
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert " PASS " in rows["alice"] and " FAIL " in rows["bob"] and " ERROR " in rows["carol"]
    assert "least significant bit group first" in rows["bob"]
    assert "1 of 3 pass" in out
    data = json.loads(report.read_text())
    assert data["files"] == 3 and data["passed"] == 1
    assert [Path(g["file"]).stem for g in data["grades"]] == ["alice", "bob", "carol"]


ENDLESS = """import numpy as np


def morton_encode(coords, bits, *, check=True):
    while True:  # never returns
        pass
"""


def test_a_file_that_never_returns_is_stopped_and_said_so(tmp_path):
    """A file is graded in a process of its own and stopped at the time limit: its grade is
    an error that says why, and the caller goes on (a whole class's folder is not stuck on
    one endless loop); a file that ends its process gets an error too."""
    endless = tmp_path / "endless.py"
    endless.write_text(ENDLESS)
    grade = grader.grade_file_limited("morton_encode", endless, 8.0, examples=5)
    assert not grade.passed and grade.status == 1
    assert grade.error.startswith("stopped after 8 s: morton_encode did not return in time")
    assert 8.0 <= grade.seconds < 60.0
    gone = tmp_path / "gone.py"
    gone.write_text(ENDLESS.replace("while True:  # never returns\n        pass",
                                    "import os\n    os._exit(3)"))
    grade = grader.grade_file_limited("morton_encode", gone, 60.0, examples=5)
    assert grade.error.startswith("the grading process ended without a grade (exit status 3)")


def test_all_of_a_folder_without_python_files(tmp_path, zeta_ref_cli):
    code, _, err = zeta_ref_cli(["grade", "morton_encode", "--all", str(tmp_path)])
    assert code == 2 and "holds no .py files" in err


def test_start_copies_the_exercises_and_list_shows_them(tmp_path, zeta_ref_cli):
    target = tmp_path / "work"
    code, out, _ = zeta_ref_cli(["grade", "--start", str(target)])
    assert code == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.py" for n in NAMES)
    assert (target / "quantize.py").read_text() == (markers.EXERCISES / "quantize.py").read_text()
    code, _, err = zeta_ref_cli(["grade", "--start", str(target), "quantize"])
    assert code == 2 and "exists (--force overwrites)" in err
    code, _, _ = zeta_ref_cli(["grade", "--start", str(target), "quantize", "--solutions", "--force"])
    assert code == 0
    assert (target / "quantize.py").read_text() == \
        catalog.EXERCISES["quantize"].solution_file.read_text()
    code, out, _ = zeta_ref_cli(["grade", "--list"])
    assert code == 0 and all(n in out for n in NAMES) and "hard" in out
