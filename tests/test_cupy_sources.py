"""The CuPy backend's sources, checked without a GPU (these run in CI).

- every .cu file (the backend's, and the experiments' in docs/data) compiles for sm_90 with
  warnings as errors (where nvcc is installed), so a kernel that does not compile never lands;
- the constants of exp_ieee in zeta_common.cuh are, digit for digit, those of quantize.py (D13);
- without CuPy (or without a GPU) zeta_ref imports, does not list "cupy", and asking for it
  fails in one line that says what to install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import zeta_ref
from zeta_ref.stages import quantize

CUPY_DIR = Path(zeta_ref.__file__).parent / "cupy"
# the library's kernels, and the experiments' beside their scripts (docs/data, built against
# the library's sources), where this is a checkout
SOURCES = sorted(CUPY_DIR.glob("*.cu")) + sorted(
    (Path(__file__).resolve().parents[1] / "docs" / "data").glob("*.cu"))


def test_there_are_kernel_sources():
    assert {p.stem for p in SOURCES} >= {"quantize", "morton", "sort", "window", "topk_softmax"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_kernel_compiles_for_sm90_without_warnings(source, tmp_path):
    """The whole tool chain (front end, NVVM, ptxas) at optimisation level 1.

    At the default level NVVM unrolls the backward kernels' loops for minutes (backward.cu:
    155 s of a 2-core CI machine against 5 s at -O1); the warnings are the front end's and do
    not depend on the level. The GPU tests compile every kernel at full optimisation, through
    NVRTC, as the backend does."""
    done = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", f"-I{CUPY_DIR}",
         "-Xcicc", "-O1", "-Xptxas", "-O1",
         "-c", str(source), "-o", str(tmp_path / "out.o")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_the_float_means_keep_subnormals_under_cupys_flush_to_zero(tmp_path):
    """CuPy appends -ftz=true to every compile, after the backend's options, so plain casts
    between float and double flush subnormals to zero there. The mean term's float kernels
    promise the double quotient of the double sums, rounded once, subnormals included: in
    their PTX, compiled with -ftz=true as CuPy compiles them, no conversion flushes (the
    emulation of tests/cuda_host casts, so only this and the GPU tests would see a flush)."""
    ptx = tmp_path / "topk_softmax.ptx"
    done = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++17", "-ftz=true", f"-I{CUPY_DIR}", "-Xcicc", "-O1",
         "-ptx", str(CUPY_DIR / "topk_softmax.cu"), "-o", str(ptx)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    entries = re.split(r"\n(?=\.visible \.entry|\.weak \.entry|\.entry)", ptx.read_text())
    seen = set()
    for body in entries:
        name = re.search(r"\.entry (\w+)\(", body)
        if name and re.search(r"zeta_(block_sums|means_write)If", name.group(1)):
            seen.add(name.group(1))
            conversions = re.findall(r"\bcvt(?:\.\w+)*\.f(?:64\.f32|32\.f64)\b", body)
            assert conversions, name.group(1)
            assert not [c for c in conversions if ".ftz" in c], (name.group(1), conversions)
    assert len(seen) == 4, seen  # zeta_block_sums and zeta_means_write, <float, 1> and <float, 4>
    # and the flag does flush a plain cast, which the test would see
    cast = tmp_path / "cast.cu"
    cast.write_text("__global__ void widen(const float* x, double* y) { *y = (double)*x; }\n")
    done = subprocess.run(["nvcc", "-arch=sm_90", "-ftz=true", "-ptx", str(cast), "-o",
                           str(tmp_path / "cast.ptx")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "cvt.ftz.f64.f32" in (tmp_path / "cast.ptx").read_text()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_the_integer_stages_keep_subnormals_under_cupys_flush_to_zero(tmp_path):
    """The re-rank's nearness (window.cu) adds, subtracts, multiplies and compares floats as
    NumPy does, subnormals included, and the cells (quantize.cu) convert a float coordinate to double
    without flushing it: compiled with -ftz=true as CuPy compiles them, their PTX has no
    flushing float arithmetic of those kinds and no flushing conversion to double (the float
    guess of the cell, which may flush, defers at 0: zeta_common.cuh)."""
    found = {}
    for stem in ("window", "quantize"):
        ptx = tmp_path / f"{stem}.ptx"
        done = subprocess.run(
            ["nvcc", "-arch=sm_90", "-std=c++17", "-ftz=true", f"-I{CUPY_DIR}", "-Xcicc", "-O1",
             "-ptx", str(CUPY_DIR / f"{stem}.cu"), "-o", str(ptx)],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        found[stem] = ptx.read_text()
    ops = re.findall(r"\b(?:add|sub|mul)\.rn(?:\.ftz)?\.f32\b", found["window"])
    assert len(ops) >= 3 and not [op for op in ops if ".ftz" in op], ops
    compares = re.findall(r"\bsetp\.\w+?(?:\.ftz)?\.f32\b", found["window"])  # the order
    assert compares and not [c for c in compares if ".ftz" in c], compares
    widen = re.findall(r"\bcvt(?:\.ftz)?\.f64\.f32\b", found["quantize"])
    assert widen and "cvt.ftz.f64.f32" not in widen, widen


def test_exp_constants_match_the_specification():
    text = (CUPY_DIR / "zeta_common.cuh").read_text()
    defined = dict(re.findall(r"#define ZETA_(\w+) (\S+)", text))
    assert float(defined["LN2_HI"]) == quantize.LN2_HI
    assert float(defined["LN2_LO"]) == quantize.LN2_LO
    assert float(defined["INV_LN2"]) == quantize.INV_LN2
    assert float(defined["EXP_MAX_ARG"]) == quantize.EXP_MAX_ARG
    assert float(defined["EXP_MIN_ARG"]) == quantize.EXP_MIN_ARG
    taylor = re.search(r"taylor\[14\] = \{([^}]*)\}", text).group(1)
    assert tuple(float(c) for c in taylor.split(",")) == quantize.EXP_TAYLOR


def test_without_a_usable_gpu_the_backend_is_absent_and_says_why():
    if "cupy" in zeta_ref.backends():
        pytest.skip("CuPy and a GPU are present here")
    assert "cupy" in zeta_ref.backends(include_unavailable=True)
    with pytest.raises(ValueError, match=r"backend 'cupy' is registered but not usable") as err:
        zeta_ref.get_backend("cupy")
    message = str(err.value)
    assert "\n" not in message
    assert "cuda12" in message or "GPU" in message


def _declared_names(py: Path) -> list[str]:
    """The kernel names a launcher asks its RawModule for (its _NAMES tuple)."""
    match = re.search(r"^_NAMES = \(([^)]*)\)", py.read_text(), re.S | re.M)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


@pytest.mark.parametrize("launcher", sorted(p for p in CUPY_DIR.glob("*.py")
                                            if (CUPY_DIR / f"{p.stem}.cu").exists()),
                         ids=lambda p: p.name)
def test_every_kernel_a_launcher_names_is_defined_in_its_source(launcher):
    """NVRTC only finds a missing kernel at run time, on a GPU: catch it here."""
    source = (CUPY_DIR / f"{launcher.stem}.cu").read_text()
    names = _declared_names(launcher)
    assert names, launcher
    for name in names:
        base = name.split("<")[0]
        assert re.search(rf"__global__ void (__launch_bounds__\([^)]*\)\s*)?{base}\s*\(",
                         source), (launcher.name, name)
        if "<" in name:  # a template instance must be instantiated explicitly too
            args = name[name.index("<"):].replace(" ", "")
            flat = source.replace(" ", "").replace("\\\n", "")
            assert f"{base}{args}(" in flat or f"{base}<" in flat, (launcher.name, name)


def test_the_attention_experiment_asks_for_instances_its_source_has():
    """docs/data/attention_ahead_ab.py (run on a GPU only) asks NVRTC for the instances of
    docs/data/attention_ahead.cu by name: each must be instantiated there."""
    data = Path(__file__).resolve().parents[1] / "docs" / "data"
    if not (data / "attention_ahead_ab.py").exists():
        pytest.skip("not a checkout: docs/data is absent")
    script = (data / "attention_ahead_ab.py").read_text()
    asked = re.findall(r"\((\d), (\d+), (\d)\)", re.search(r"^AHEAD = (.*)$", script,
                                                           re.M).group(1))
    source = (data / "attention_ahead.cu").read_text()
    made = set(re.findall(r"^ZETA_TOPK_AHEAD\((\d), (\d+), (\d)\)$", source, re.M))
    assert asked and set(asked) <= made, (asked, made)
    assert "#pragma unroll 8\n        for (int t = 0; t < n_slots; ++t) {" in \
        (CUPY_DIR / "topk_softmax.cu").read_text()  # the loop the script unrolls 16 times


def _experiment(name: str):
    """The experiment script docs/data/NAME.py as a module (skipped outside a checkout)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "data" / f"{name}.py"
    if not path.exists():
        pytest.skip("not a checkout: docs/data is absent")
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fused_pass_scan_gives_the_library_pools_and_places():
    """fused.cu sorts each row's queries into its keys and takes every query's place in its
    prefix pool from the pools' scan. Its NumPy replay (docs/data/window_merged_replay.py:
    the kernels' buffers, every slot written once) must give the pools, the places a binary
    search finds and the queries in Z order, at N = 1, around the smallest pool (256), past a
    tile (1024), with bits = 1 (ties everywhere), with all 64 bits of the packing used, with
    one to five rows, in every causal mode."""
    replay = _experiment("window_merged_replay")
    results = replay.run_cases()
    assert len(results) == len(replay.CASES) >= 13
    bad = {case: failures for case, failures in results.items() if failures}
    assert not bad, bad


def test_the_merged_window_replay_sees_a_wrong_tie_order():
    """The replay's checks can fail: with the key bit inverted, each query sorts after the
    keys of its own code, and its place is past the search's wherever a key shares its code
    (bits = 1: everywhere)."""
    replay = _experiment("window_merged_replay")
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((2, 2, 300, 3))  # two rows of 300
    cfg = zeta_ref.ZetaConfig(bits=1)
    assert replay.check(q, k, cfg) == []
    wrong = replay.check(q, k, cfg, key_bit=0)
    assert {f.split(":")[0] for f in wrong} == {"row 0", "row 1"}, wrong
    assert all("places in level" in f for f in wrong), wrong


def test_the_next_gpu_sessions_plan_parses_and_names_scripts_that_exist():
    """docs/data/gpu_next.sh (run on the GPU machine only) is valid bash, refuses a step it
    does not know, and every script it runs is in the checkout."""
    root = Path(__file__).resolve().parents[1]
    plan = root / "docs" / "data" / "gpu_next.sh"
    if not plan.exists():
        pytest.skip("not a checkout: docs/data is absent")
    assert subprocess.run(["bash", "-n", str(plan)]).returncode == 0
    refused = subprocess.run(["bash", str(plan), "nonsense"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage" in refused.stderr
    named = set(re.findall(r"(docs/data/\w+\.py)", plan.read_text()))
    assert len(named) >= 3
    for script in named:
        assert (root / script).is_file(), script


def test_the_narrow_attention_experiment_asks_for_instances_its_source_has():
    """docs/data/attention_narrow_ab.py (run on a GPU only) asks NVRTC for the instances of
    docs/data/attention_narrow.cu by name: each must be instantiated there, and G = 16 among
    them (the library kernel written the new way, the check of the rewrite)."""
    data = Path(__file__).resolve().parents[1] / "docs" / "data"
    if not (data / "attention_narrow_ab.py").exists():
        pytest.skip("not a checkout: docs/data is absent")
    script = (data / "attention_narrow_ab.py").read_text()
    asked = set(re.findall(r"\((\d+), (\d+)\)", re.search(r"^NARROW = (.*)$", script,
                                                          re.M).group(1)))
    source = (data / "attention_narrow.cu").read_text()
    made = set(re.findall(r"^ZETA_TOPK_NARROW\((\d+), (\d+)\)$", source, re.M))
    library = (CUPY_DIR / "topk_softmax.cu").read_text()  # G = 8, unroll 8: the library's own
    if re.search(r"^ZETA_TOPK_NARROW8\(3, 0\)$", library, re.M):
        made.add(("8", "8"))
    assert ("16", "8") in asked and len(asked) >= 3 and asked <= made, (asked, made)
    # the names the script builds, and the instances the macro makes: <G, 3, 1, UNROLL, 0>
    assert 'f"zeta_topk_narrow<{g}, 3, 1, {u}, 0>"' in script
    assert "template __global__ void zeta_topk_narrow<G, 3, 1, UNROLL, 0>(" in source
    assert "template __global__ void zeta_topk_narrow<8, U, 1, 8, DK>(" in library


def test_the_means_experiment_finds_the_text_it_replaces():
    """docs/data/means_ab.py (run on a GPU only) builds its variants of topk_softmax.cu by
    replacing lines of the library's source: each must still be there, as often as the script
    asserts (else it stops on the device, where time is short)."""
    data = Path(__file__).resolve().parents[1] / "docs" / "data"
    if not (data / "means_ab.py").exists():
        pytest.skip("not a checkout: docs/data is absent")
    script = (data / "means_ab.py").read_text()
    source = (CUPY_DIR / "topk_softmax.cu").read_text()
    for name, count in (("QUOTIENT", 2), ("INVERSE", 2), ("UNROLL", 1)):
        text = re.search(rf'^{name} = "(.*)"$', script, re.M).group(1)
        assert source.count(text) == count, (name, text)
        assert f"text.count({name}) == {count}" in script
