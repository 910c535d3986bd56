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

from sphinx.util import logging as sphinx_logging

logger = sphinx_logging.getLogger("zeta_ref.docs")

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


# Each notebook's page offers it for download: the MyST Markdown source (the copy above) and a
# Jupyter notebook without outputs, made from it here by jupytext. The .ipynb files go to a
# folder of their own that Sphinx does not read as pages (exclude_patterns below): myst-nb
# reads .ipynb files too, and an .ipynb beside its .md would be a second copy of the page.
NOTEBOOKS_IPYNB = NOTEBOOKS_DST / "_ipynb"


def _write_ipynb() -> None:
    import jupytext  # the docs extra installs it

    NOTEBOOKS_IPYNB.mkdir(exist_ok=True)
    for old in NOTEBOOKS_IPYNB.glob("*.ipynb"):
        if not (NOTEBOOKS_DST / f"{old.stem}.md").exists():
            old.unlink()
    for src in sorted(NOTEBOOKS_DST.glob("*.md")):
        dst = NOTEBOOKS_IPYNB / f"{src.stem}.ipynb"
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            jupytext.write(jupytext.read(src), dst, fmt="ipynb")


_sync_notebooks()
_write_ipynb()

# The notebooks draw with matplotlib's inline backend. CI exports MPLBACKEND=Agg for the demo;
# a kernel started with that setting would draw nothing into the pages, so drop it here (the
# kernel inherits this process's environment, and ipykernel then picks its inline backend).
os.environ.pop("MPLBACKEND", None)
# Figures as SVG. The kernels myst-nb starts draw with matplotlib's inline backend, which
# sends PNG unless its IPython configuration says otherwise. We write a small IPython profile
# and point IPYTHONDIR at it; every kernel inherits this process's environment and reads it.
# Only this build's kernels see it (a user's own IPython profile is left alone). With it every
# figure is an image/svg+xml output, which myst-nb writes as an .svg file and Sphinx copies to
# _images/. The SVG carries no date and fixed element ids, so an unchanged figure gives the
# same bytes (and the same file name) at every build. The history database is switched off:
# several builds may run kernels at once.
IPYTHON_DIR = NOTEBOOKS_DST / ".ipython"
_KERNEL_CONFIG = """\
# written by docs/conf.py for the notebook kernels of the documentation build
c.InlineBackend.figure_formats = {"svg"}
c.InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "metadata": {"Date": None}}
c.InlineBackend.rc = {"svg.hashsalt": "zeta_ref"}
c.HistoryManager.enabled = False
"""
_profile = IPYTHON_DIR / "profile_default"
_profile.mkdir(parents=True, exist_ok=True)
if not (_profile / "ipython_kernel_config.py").exists() or (
        (_profile / "ipython_kernel_config.py").read_text() != _KERNEL_CONFIG):
    (_profile / "ipython_kernel_config.py").write_text(_KERNEL_CONFIG)
os.environ["IPYTHONDIR"] = str(IPYTHON_DIR)
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
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "images",
                    "notebooks/_ipynb", "notebooks/.ipython"]

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


# --- downloads, and every named figure as a file of its own ---------------------------------
# Sphinx events add to what the pages above produce:
#   source-read puts download links under the title of each notebook's page, and writes the
#       list of figures into docs/figures.md (at its marker);
#   env-before-read-docs reads docs/figures.md after the notebooks, so that the list knows
#       which figures were drawn (env-get-outdated re-reads it at every build);
#   build-finished copies every named figure of the notebooks to figures/<name>.svg in the
#       built site, where a teacher can take it for slides, and removes stale ones.
# A figure is named in its code cell's metadata, ``mystnb: figure: {name: ..., caption: ...}``.
# The list is read from the notebooks' sources, so it holds whatever names they carry; the
# files are found in the doctrees myst-nb built from the executed notebooks. A figure named in
# a cell that drew nothing (a GPU cell without a GPU) is listed as not drawn.
FIGURES_DIR = "figures"  # in the built site


def notebook_figures() -> list[dict]:
    """Every named figure of notebooks/*.md, in notebook and cell order.

    Each is a dict with ``name``, ``caption`` (the metadata's text), ``notebook`` (the file's
    stem) and ``cell`` (its index among the notebook's cells).
    """
    import jupytext

    found = []
    for src in sorted(NOTEBOOKS_SRC.glob("*.md")):
        for index, cell in enumerate(jupytext.read(src).cells):
            fig = (cell.metadata.get("mystnb") or {}).get("figure") or {}
            if isinstance(fig, dict) and fig.get("name"):
                found.append({"name": str(fig["name"]), "caption": " ".join(
                    str(fig.get("caption", "")).split()), "notebook": src.stem, "cell": index})
    return found


def _download_links(stem: str) -> str:
    return (
        "\n{download}`Download this notebook <_ipynb/" + stem + ".ipynb>` (Jupyter, without "
        "outputs) or {download}`its MyST Markdown source <" + stem + ".md>` (the text file "
        "in the repository, which Jupyter opens with jupytext).\n"
    )


def _figure_list(app) -> str:
    drawn = {name for name, path in _exported_figures(app)}
    lines = []
    for fig in notebook_figures():
        name, nb = fig["name"], fig["notebook"]
        lines += [f"### {name}", "", f"{fig['caption']}", ""]
        if name not in drawn:  # named in the metadata, but its cell made no image this time
            lines += [f"From {{doc}}`notebooks/{nb}`. *Not drawn when this site was built*: its "
                      "cell made no figure (a cell that needs a GPU draws nothing without one).",
                      ""]
            continue
        lines += [
            f"From {{doc}}`notebooks/{nb}` ({{ref}}`see it in place <{name}>`).", "",
            f'<p><a class="reference external" href="{FIGURES_DIR}/{name}.svg" '
            f'download>{FIGURES_DIR}/{name}.svg</a></p>', "",
            f'<p><img src="{FIGURES_DIR}/{name}.svg" alt="{name}" '
            f'loading="lazy" style="max-width: 24em; border: 1px solid #ddd"></p>', "",
        ]
    if not lines:
        lines = ["No notebook names a figure yet.", ""]
    return "\n".join(lines)


def _read_figures_last(app, env, docnames: list[str]) -> None:
    # the figures page lists what the notebooks drew, so it is read after them
    if "figures" in docnames:
        docnames.remove("figures")
        docnames.append("figures")


def _on_source_read(app, docname: str, source: list[str]) -> None:
    text = source[0]
    if docname.startswith("notebooks/") and docname.count("/") == 1:
        # after the title, the first line that starts with "# " outside the front matter
        lines = text.split("\n")
        body = 0
        if lines and lines[0].strip() == "---":  # jupytext's front matter
            body = next(i for i in range(1, len(lines)) if lines[i].strip() == "---") + 1
        for i in range(body, len(lines)):
            if lines[i].startswith("# "):
                lines.insert(i + 1, _download_links(docname.split("/", 1)[1]))
                break
        source[0] = "\n".join(lines)
    elif docname == "figures":
        source[0] = text.replace("<!-- the list of figures -->", _figure_list(app))


def _always_reread_figures(app, env, added, changed, removed):
    return ["figures"] if "figures" in env.found_docs else []  # its list follows the notebooks


def _exported_figures(app) -> list[tuple[str, Path]]:
    """(name, image file) of every named figure in the notebooks' doctrees."""
    from docutils import nodes

    env, out = app.env, []
    for docname in sorted(d for d in env.found_docs if d.startswith("notebooks/")):
        if docname not in env.all_docs:  # not read (yet)
            continue
        for figure in env.get_doctree(docname).findall(nodes.figure):
            images = list(figure.findall(nodes.image))
            for name in figure["names"]:
                if images:
                    uri = images[0]["candidates"].get("*", images[0]["uri"])
                    out.append((name, Path(app.srcdir) / uri))
    return out


def _on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / FIGURES_DIR
    target.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for name, path in _exported_figures(app):
        if not path.exists():
            logger.warning(f"figure {name}: its image {path} is missing", type="zeta_ref")
            continue
        wanted[f"{name}{path.suffix}"] = path
    for old in target.iterdir():
        if old.name not in wanted:
            old.unlink()
    for filename, path in wanted.items():
        shutil.copyfile(path, target / filename)
    logger.info(f"zeta_ref: {len(wanted)} named figures exported to {target}")


def setup(app):
    app.connect("source-read", _on_source_read)
    app.connect("env-get-outdated", _always_reread_figures)
    app.connect("env-before-read-docs", _read_figures_last)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
