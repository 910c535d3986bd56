"""The documentation site builds without a warning, and every notebook runs and draws.

One Sphinx build (the README's command, into a temporary folder) executes every notebook of
notebooks/ once through myst-nb; any exception in a cell or any Sphinx warning fails it. The
checks after it read the HTML that build wrote. The build takes about a minute on two cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.md"))

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # docs/conf.py drops it too; the kernels must draw inline
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-d", str(out / ".doctrees"), str(ROOT / "docs"), str(out)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (
        f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-12000:]}"
    )
    return out


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_page_has_its_figures(site, name):
    page = site / "notebooks" / f"{name}.html"
    assert page.exists(), f"no page for notebook {name}"
    html = page.read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
    assert images, f"{page.name} shows no figure"
    for src in images:
        assert (page.parent / src).resolve().exists(), f"{page.name}: missing image {src}"


@pytest.mark.parametrize("page", ["index", "getting-started", "api", "decisions", "benchmarks"])
def test_page_exists(site, page):
    assert (site / f"{page}.html").exists()


def test_api_reference_documents_every_stage(site):
    html = (site / "api.html").read_text(encoding="utf-8")
    for name in ["zeta_ref.zeta_attention", "zeta_ref.ZetaConfig", "zeta_ref.Intermediates",
                 "zeta_ref.stages.projection.random_projection", "zeta_ref.stages.quantize.quantize",
                 "zeta_ref.stages.morton.morton_encode", "zeta_ref.stages.sort.sort_keys",
                 "zeta_ref.stages.window.neighbour_window", "zeta_ref.stages.topk_softmax.topk_attention",
                 "zeta_ref.oracles.exact_topk", "zeta_ref.backends.backends"]:
        assert f'id="{name}"' in html, f"{name} missing from the API reference"


def test_notebooks_are_stored_without_outputs_and_with_a_parameter_cell():
    for name in NOTEBOOKS:
        text = (ROOT / "notebooks" / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith("---\njupytext:"), f"{name}: not a jupytext MyST notebook"
        assert "name: python3" in text, f"{name}: kernelspec python3 missing"
        assert ":tags: [parameters]" in text, f"{name}: no cell tagged 'parameters'"
        assert "np.random.seed(" not in text and "np.random.rand" not in text, (
            f"{name}: use np.random.default_rng(seed), not the global random state"
        )
