"""Sphinx configuration of the documentation site (``make docs``; see README.md, "The documentation site").

The source folder is the repository root, so the README, the notebooks and ``docs/results/`` keep the
relative paths they have on GitHub; ``include_patterns`` names the pages. The notebooks are executed
at build time by myst-nb (Sphinx with myst-nb rather than Jupyter Book: the same notebook executor,
but Sphinx's own autodoc reads the library's docstrings for the API reference, and every piece is a
plain PyPI package). They run on the ``quick`` profile (``$MIXOUT_DOCS_PROFILE`` to change it: CI builds
at ``smoke`` to save time) with empty results folders, so the experiment notebooks show the committed
paper-profile results, as they do in a fresh clone.
"""

import os
import shutil
import tempfile
from pathlib import Path

from mixout_theory import __version__

ROOT = Path(__file__).resolve().parents[1]

# What the notebooks see when the build executes them (the kernel inherits this environment).
_scratch = Path(tempfile.mkdtemp(prefix="mixout-docs-"))
os.environ.update(
    MIXOUT_PROFILE=os.environ.get("MIXOUT_DOCS_PROFILE", "quick"),
    MIXOUT_RECOMPUTE="0",
    MIXOUT_RESULTS=str(_scratch / "results"),
    MIXOUT_FIGURES=str(_scratch / "figures"),
    MPLBACKEND="Agg",
)

project = "mixout-theory"
author = "mixout-theory contributors"
copyright = "2026, mixout-theory contributors"
version = release = __version__

root_doc = "docs/index"
include_patterns = [
    "docs/index.md",
    "docs/api.md",
    "docs/results.md",
    "docs/results/*/README.md",
    "docs/results/*/fidelity.md",
    "notebooks/*.ipynb",
]
exclude_patterns = ["docs/_build", ".venv", "data", "results", "figures"]

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings give the types
napoleon_google_docstring = True
napoleon_custom_sections = [("Shape", "notes_style")]

html_theme = "furo"
html_title = f"mixout-theory {__version__}"
html_static_path = []
html_favicon = "favicon.svg"
html_copy_source = False
suppress_warnings = ["misc.highlighting_failure"]


def _front_page(app, exception):
    """The site's ``index.html`` at the output root, forwarding to the front page (``docs/index.html``);
    the notebooks' scratch folders removed."""
    shutil.rmtree(_scratch, ignore_errors=True)
    if exception is None and app.builder.format == "html":
        page = "docs/index.html"
        (Path(app.outdir) / "index.html").write_text(
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{project}</title>'
            f'<link rel="icon" href="_static/favicon.svg">'
            f'<meta http-equiv="refresh" content="0; url={page}"></head>'
            f'<body><a href="{page}">{project}</a></body></html>\n'
        )


def setup(app):
    app.connect("build-finished", _front_page)
