"""Sphinx configuration for the minireactor + proxy documentation.

Built offline in CI with ``python -m sphinx -n -W --keep-going -b html docs docs/_build/html``:
no CDN, no remote fonts, no intersphinx, the built-in alabaster theme. Pages are Markdown
(MyST) or reST; the notebooks and their instructor guide are copied in at build time, and the
notebooks are rendered without executing.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

project = "minireactor + proxy"
author = "the minireactor + proxy authors"
copyright = "2026, " + author
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "myst_nb",
    "proxydocs",
    "benchdocs",
]

exclude_patterns = ["_generated", "_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
root_doc = "index"
# Keep "--help" and straight quotes as typed: command lines must survive copy and paste.
smartquotes = False

# -- MyST and notebooks --------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
# Notebook metadata may name a kernel this machine lacks; rendering needs none.
nb_kernel_rgx_aliases = {".*": "python3"}

# -- autodoc ---------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "class"

# -- nitpicky: every reference must resolve; the standard library is not linked offline ------------
nitpicky = True
nitpick_ignore_regex = [
    # Standard-library and builtin names in type hints (no intersphinx: we are offline).
    (
        "py:class",
        r"(collections\.abc|typing|socket|selectors|argparse|threading|ipaddress"
        r"|concurrent\.futures|enum|dataclasses|logging|pathlib|os|types|collections|sqlite3)\..*",
    ),
    ("py:class", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Protocol|TypeVar|F|NoneType)"),
    (
        "py:class",
        r"(bytes|bytearray|memoryview|str|int|float|bool|dict|list|tuple|set|frozenset"
        r"|object|type|BaseException|Exception|RuntimeError|TimeoutError|OSError|ValueError)",
    ),
    (
        "py:(func|meth|mod|data|obj|exc)",
        r"(hmac|hashlib|base64|getpass|heapq|selectors|socket|os|fcntl|time|threading|argparse"
        r"|email\.utils|collections|dataclasses|inspect|ast|signal|tomllib|logging|json)(\..*)?",
    ),
]

# Names in docstrings of code this docs tree does not own that cannot resolve as written (a method
# named in a module docstring without its class, attributes without docstrings, a TypeVar, a
# private base class). Listed one by one so a new dangling reference still fails the build.
nitpick_ignore = [
    ("py:attr", "ReloadReport.errors"),
    ("py:attr", "Authenticator.budget"),
    # Type variables of generic functions, as autodoc writes them in signatures.
    ("py:class", "proxy.session.guard.Owner"),
    ("py:class", "~Params"),
    ("py:class", "proxy.session.diagram.S"),
    ("py:class", "proxy.session.diagram.T"),
    ("py:class", "Warn"),  # a Callable alias in proxy.cache.disk's signatures
    ("py:class", "proxy.http11.parser._Parser"),
]

# -- HTML: alabaster, shipped with Sphinx, nothing fetched -----------------------------------------
html_theme = "alabaster"
html_title = "minireactor + proxy"
html_static_path: list[str] = []
html_theme_options = {
    "description": "A forward HTTP/HTTPS proxy on a hand-written reactor, built to be read.",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
    "font_family": "system-ui, -apple-system, Segoe UI, sans-serif",
    "head_font_family": "system-ui, -apple-system, Segoe UI, sans-serif",
    "code_font_family": "ui-monospace, Menlo, Consolas, monospace",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}

# -- notebooks: copied from ../notebooks so the toctree stays inside the source dir ---------------
NOTEBOOKS_SRC = ROOT / "notebooks"
NOTEBOOKS_DST = DOCS / "tutorials" / "notebooks"
GUIDE = NOTEBOOKS_SRC / "README.md"


def copy_notebooks(app: object) -> None:
    """Mirror ``notebooks/*.ipynb`` and the instructor guide into ``docs/tutorials/notebooks/``.

    The guide (``notebooks/README.md``) is copied beside the notebooks so that its links to
    them resolve in the docs as they do on disk. The folder is git-ignored. Only changed files
    are rewritten, so incremental builds re-read only what changed; a file deleted upstream
    disappears from the copy too.
    """
    NOTEBOOKS_DST.mkdir(parents=True, exist_ok=True)
    wanted = {path.name: path for path in sorted(NOTEBOOKS_SRC.glob("*.ipynb"))}
    wanted[GUIDE.name] = GUIDE
    for stale in [*NOTEBOOKS_DST.glob("*.ipynb"), *NOTEBOOKS_DST.glob("*.md")]:
        if stale.name not in wanted:
            stale.unlink()
    for name, source in wanted.items():
        target = NOTEBOOKS_DST / name
        data = source.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
            shutil.copystat(source, target)


def setup(app: object) -> None:
    """Hook the notebook copy in before Sphinx looks for source files."""
    app.connect("builder-inited", copy_notebooks)  # type: ignore[attr-defined]
