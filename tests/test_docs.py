"""Docs are code: every name the documentation gives must exist.

Scanned: README.md, docs/*.md, benchmarks/README.md, conf/**/*.yaml (whole text), and the docstrings and
comments of gptlit/**/*.py, the command lines, benchmarks/*.py and tests/*.py. In them:
- dotted names `gptlit.<module>[.<attribute>...]`: the longest prefix that is a module is imported and the
  rest looked up on it; or an OmegaConf resolver gptlit registers (`${gptlit.run_dir:...}`: every
  module-level `register*resolvers()` of gptlit is called first);
- paths `gptlit/<path>.py`, `conf/<path>.yaml`, `benchmarks/<name>.py`, `tests/<name>.py`, `docs/<name>.md`: the file exists
  (relative to the repository root);
- the relative link targets of the Markdown files (images under docs/img included): they exist, relative
  to the file that links, and so does the heading a `#anchor` names.
Nothing trains; the test imports gptlit's modules and reads files.
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import pkgutil
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train.py", "sample.py", "export.py", "eval.py", "report.py", "compress.py"]

DOTTED = re.compile(r"(?<![\w./-])gptlit(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(
    r"(?<![\w./-])((?:gptlit|benchmarks|tests)/[\w./-]*\.py|conf/[\w./-]*\.yaml|docs/[\w./-]*\.md)(?![\w/-])"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


def python_files() -> list[Path]:
    files = sorted((ROOT / "gptlit").rglob("*.py"))
    files += [ROOT / c for c in COMMANDS if (ROOT / c).is_file()]
    files += sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    return files


def prose_of_python(path: Path) -> str:
    """The docstrings and comments of a Python file."""
    src = path.read_text()
    parts = []
    for node in ast.walk(ast.parse(src, str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            parts.append(tok.string)
    return "\n".join(parts)


def documents() -> dict[str, str]:
    docs = {str(f.relative_to(ROOT)): f.read_text() for f in markdown_files()}
    docs |= {str(f.relative_to(ROOT)): f.read_text() for f in sorted((ROOT / "conf").rglob("*.yaml"))}
    docs |= {str(f.relative_to(ROOT)): prose_of_python(f) for f in python_files()}
    return docs


@functools.lru_cache(maxsize=1)
def register_resolvers() -> None:
    """Register the OmegaConf resolvers gptlit has (importing every module of the package)."""
    import gptlit

    for info in pkgutil.walk_packages(gptlit.__path__, "gptlit."):
        module = importlib.import_module(info.name)
        for name, fn in vars(module).items():
            if name.startswith("register") and name.endswith("resolvers") and callable(fn):
                fn()


def is_resolver(name: str) -> bool:
    from omegaconf import OmegaConf

    register_resolvers()
    return OmegaConf.has_resolver(name)


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return is_resolver(dotted)
            obj = getattr(obj, attr)
        return True
    return is_resolver(dotted)


def test_dotted_names_exist():
    names: dict[str, set[str]] = {}
    for where, text in documents().items():
        for m in DOTTED.finditer(text):
            names.setdefault(m.group(0), set()).add(where)
    assert names, "the scan found no gptlit.<name> at all: the regex is broken"
    stale = {n: sorted(w) for n, w in names.items() if not resolves(n)}
    assert not stale, f"names that do not exist (name: where): {stale}"


def test_paths_exist():
    paths: dict[str, set[str]] = {}
    for where, text in documents().items():
        for m in PATH.finditer(text):
            paths.setdefault(m.group(1), set()).add(where)
    assert paths, "the scan found no path at all: the regex is broken"
    stale = {p: sorted(w) for p, w in paths.items() if not (ROOT / p).exists()}
    assert not stale, f"files that do not exist (path: where): {stale}"


def anchors(f: Path) -> set[str]:
    """The #anchors GitHub gives the headings of a Markdown file."""
    heads = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"^```.*?^```", "", f.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_markdown_links_exist():
    stale = []
    for f in markdown_files():
        for m in LINK.finditer(f.read_text()):
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"[a-z]+:", target):
                continue
            path = (f.parent / target) if target else f
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                stale.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert not stale, f"links to files or headings that do not exist: {stale}"


def test_code_fences_are_closed():
    """An unclosed ``` swallows the rest of a page (its headings and links with it)."""
    odd = [str(f.relative_to(ROOT)) for f in markdown_files() if len(re.findall(r"^\s*```", f.read_text(), re.M)) % 2]
    assert not odd, f"a code block is not closed in {odd}"


@pytest.mark.parametrize("text, expected", [
    ("see gptlit.core.errors.UserError.", {"gptlit.core.errors.UserError"}),
    ("`python -m gptlit.commands.report`", {"gptlit.commands.report"}),
    ("a/gptlit.x", set()),
])
def test_the_scan_finds_names(text, expected):
    assert {m.group(0) for m in DOTTED.finditer(text)} == expected
    assert resolves("gptlit.core.errors.UserError") and not resolves("gptlit.core.errors.NoSuchName")


def test_pyproject_declares_every_import():
    """Every package that gptlit/ and the command lines import is a dependency or an extra of pyproject.toml."""
    import sys
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project.get("optional-dependencies", {}).values() for s in extra]
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    declared = {norm(re.match(r"[A-Za-z0-9_.-]+", s).group(0)) for s in specs}
    dists = packages_distributions()
    files = sorted((ROOT / "gptlit").rglob("*.py")) + [ROOT / c for c in COMMANDS if (ROOT / c).is_file()]
    missing = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "gptlit":
                    continue
                if not {norm(d) for d in dists.get(top, [top])} & declared:
                    missing.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml (package: files): {missing}"
