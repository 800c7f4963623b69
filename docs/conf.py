"""Sphinx configuration: the user guide (Markdown), the notebooks (rendered, not executed: CI
runs them through nbmake), the API reference from the numpydoc docstrings, and a benchmarks page
generated from ``benchmarks/results/*.json`` at build time."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(REPO))

import _benchmarks  # noqa: E402  (docs/_benchmarks.py)

from corrdiff_xr import __version__  # noqa: E402

project = "corrdiff_xr"
copyright = "the corrdiff_xr developers"
release = version = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types
autodoc_mock_imports: list[str] = []
nb_execution_mode = "off"  # executed in CI by nbmake, rendered here as saved
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"corrdiff_xr {version}"


def _copy_notebooks(app) -> None:
    """The notebooks live in ``notebooks/`` (run in CI); Sphinx reads sources under ``docs/``."""
    out = DOCS / "notebooks"
    out.mkdir(exist_ok=True)
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        shutil.copyfile(nb, out / nb.name)


def setup(app):
    app.connect("builder-inited", _copy_notebooks)
    app.connect("builder-inited", lambda app: _benchmarks.write(DOCS / "benchmarks.md"))
