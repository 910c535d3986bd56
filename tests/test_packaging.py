"""pyproject.toml is the single source of truth for dependencies; environment.yml must agree.

Also checks the contract with a newcomer: the README's commands are the ones .ci/run runs, and
CuPy is only ever an extra.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
# extras that are not mirrored in environment.yml, and why
NOT_IN_CONDA_ENV = {
    "cuda12": "CuPy wheels are per CUDA version; conda users install cupy themselves",
    "cuda13": "same as cuda12",
    "torch": "torch builds are per CUDA version too; conda users install pytorch themselves",
    "dev": "only names the other extras",
}


def _split(requirement: str):
    """'numpy>=1.24; python_version<"3.11"' -> ('numpy', '>=1.24')."""
    requirement = requirement.split(";")[0].strip()
    m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement)
    assert m, requirement
    return m.group(1).lower().replace("_", "-"), m.group(3).replace(" ", "")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_packages():
    project = _pyproject()["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        if extra in NOT_IN_CONDA_ENV:
            continue
        for r in reqs:
            name, spec = _split(r)
            assert wanted.get(name, spec) == spec, f"{name} has two version specs in pyproject"
            wanted[name] = spec
    wanted["python"] = project["requires-python"].replace(" ", "")
    return wanted


def _conda_env():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    plain, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.extend(dep.get("pip", []))
        else:
            name, spec = _split(dep)
            plain[name] = spec
    return env, plain, pip


def test_environment_yml_lists_the_same_packages_and_versions():
    env, conda, _ = _conda_env()
    assert env["channels"] == ["conda-forge"]
    conda.pop("pip", None)  # the tool that installs zeta_ref itself
    assert conda == _pyproject_packages()


def test_environment_yml_installs_zeta_ref_with_pip():
    _, _, pip = _conda_env()
    assert any(p.split()[-1].startswith(".") for p in pip), pip


def test_cupy_is_only_an_extra():
    project = _pyproject()["project"]
    assert not any("cupy" in r for r in project["dependencies"])
    extras = project["optional-dependencies"]
    assert [_split(r)[0] for r in extras["cuda12"]] == ["cupy-cuda12x"]
    assert [_split(r)[0] for r in extras["cuda13"]] == ["cupy-cuda13x"]


def test_ci_runs_the_readme_commands():
    script = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in script and "newcomer-commands" in script
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- newcomer-commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "zeta-ref demo" in lines[0] and "pytest" in lines[1] and ".[test]" in lines[1]
    # one process per core, each file's tests in one process: tests/test_docs.py builds the
    # site once (its comment says why not --dist loadgroup)
    assert "-n auto --dist loadscope" in lines[1]


def test_ci_tests_the_oldest_and_newest_admitted_python():
    """requires-python is bounded by what CI runs: its lowest and its highest minor version."""
    spec = _pyproject()["project"]["requires-python"].replace(" ", "")
    m = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec)
    assert m, f"requires-python should read '>=3.X,<3.Y'; got {spec!r}"
    oldest, newest = f"3.{m.group(1)}", f"3.{int(m.group(2)) - 1}"
    script = (ROOT / ".ci" / "run").read_text()
    assert f'PYTHONS="{oldest} {newest}"' in script


def test_console_script_and_module_entry_point_agree():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {"zeta-ref": "zeta_ref.tools.cli:main"}
    out = subprocess.run([sys.executable, "-m", "zeta_ref", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "demo" in out and "bench" in out


def test_the_package_version_is_pyprojects():
    """zeta_ref.__version__ (written into every dump and golden manifest) is pyproject's."""
    import zeta_ref

    with open(ROOT / "pyproject.toml", "rb") as f:
        assert zeta_ref.__version__ == tomllib.load(f)["project"]["version"]
