"""Sphinx configuration of the zeta_ref documentation site.

Build (from the repository root; warnings are errors, every notebook is executed):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The result lands in docs/_build/html/index.html. tests/test_docs.py runs the same build into a
temporary folder, so CI executes every notebook and fails on any error or warning.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # autodoc imports zeta_ref from this checkout

# --- the notebooks ------------------------------------------------------------------------------
# The tutorials live in notebooks/ at the top level, where a reader finds them, but Sphinx only
# reads files under its source folder (docs/). We copy them into docs/notebooks/ when this file
# is loaded, which is before Sphinx looks for source files. docs/notebooks/ is generated and
# git-ignored: the single copy under version control is notebooks/*.md. A copy was preferred to
# a symlink (which git stores, but which Windows checkouts and some archive tools break) and to
# an include directive (which would make myst-nb execute an include stub, not the notebook).
# Files are rewritten only when their text changed, so an unchanged notebook keeps its mtime
# and an incremental build does not re-read it; copies of deleted notebooks are removed.
NOTEBOOKS_SRC = ROOT / "notebooks"
NOTEBOOKS_DST = DOCS / "notebooks"


def _sync_notebooks() -> None:
    NOTEBOOKS_DST.mkdir(exist_ok=True)
    wanted = {p.name: p for p in sorted(NOTEBOOKS_SRC.glob("*.md"))}
    for old in NOTEBOOKS_DST.glob("*.md"):
        if old.name not in wanted:
            old.unlink()
    for name, src in wanted.items():
        dst = NOTEBOOKS_DST / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)


_sync_notebooks()

# The notebooks draw with matplotlib's inline backend. CI exports MPLBACKEND=Agg for the demo;
# a kernel started with that setting would draw nothing into the pages, so drop it here (the
# kernel inherits this process's environment, and ipykernel then picks its inline backend).
os.environ.pop("MPLBACKEND", None)
# The notebook kernels must import the zeta_ref of this checkout, installed or not, so that the
# site always shows the code next to it (not an older copy somewhere in site-packages).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

# --- project ------------------------------------------------------------------------------------
project = "zeta_ref"
author = "the zeta_ref authors"
copyright = "2025, the zeta_ref authors"
import zeta_ref  # noqa: E402  (after the sys.path line above)

release = version = zeta_ref.__version__

extensions = [
    "myst_nb",  # Markdown pages and MyST-markdown notebooks (it loads myst_parser itself)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # numpy-style docstrings
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "images"]

# --- MyST ---------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3  # "(#conventions)"-style links to headings
suppress_warnings = ["myst.header"]  # a notebook may open with a level-2 heading after its title

# --- notebook execution (myst-nb) -------------------------------------------------------------
nb_execution_mode = "force"  # the notebooks are stored without outputs: always run them
nb_execution_timeout = 600  # seconds per cell: generous, a slow CI machine must not time out
nb_execution_raise_on_error = True  # any exception in a cell fails the build
nb_execution_show_tb = True  # and prints its traceback in the build log
nb_merge_streams = True

# --- autodoc ------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
# the GPU backend's modules, and the PyTorch adapter, are documented without a GPU or torch
autodoc_mock_imports = ["cupy", "torch"]
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"  # no second list of fields
autodoc_preserve_defaults = True  # show xp=np, not the module's repr
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# --- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"zeta_ref {release}"
html_static_path: list[str] = []
