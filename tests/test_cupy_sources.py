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
