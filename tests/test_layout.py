"""The layout is the architecture: sub-packages are layers and every import goes down.

The import graph is read from the code itself (ast, every `import gptlit...` including those inside
functions): no cycle, no import from a lower layer to a higher one, at most MAX_FLOORS floors (a module
stands one floor above everything it imports; the command lines count). `python tests/test_layout.py`
prints the floors.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top; a module may import its own layer's modules (without a cycle) and lower layers'
LAYERS = ["core", "model", "data", "interop", "training", "evaluation", "run", "commands"]
SHIMS = ["train.py", "sample.py", "export.py", "eval.py", "report.py", "compress.py"]  # each only runs gptlit.commands.<name>.main
COMMANDS = [*SHIMS, "hydra_plugins/gptlit_optuna_sweeper.py"]  # entry points above gptlit/ (Hydra imports the plugin)
MAX_FLOORS = 7  # the shims at the root, one floor above their gptlit.commands module, are not counted


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    files = {module_name(p): p for p in (ROOT / "gptlit").rglob("*.py")}
    files.update({Path(c).stem + ".py": ROOT / c for c in COMMANDS if (ROOT / c).is_file()})
    return files


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The gptlit modules that `path` imports (`from gptlit.<package> import <name>` names the module gptlit.<package>.<name> when that is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gptlit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("gptlit"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return {m for m in out if m in known}


@functools.lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    files = sources()
    known = set(files)
    return {m: imports_of(p, known) - {m} for m, p in files.items()}


def layer(module: str) -> int:
    """A module's layer; the package face (gptlit/__init__) and the command lines stand above them all."""
    parts = module.split(".")
    if module.endswith(".py") or module == "gptlit":
        return len(LAYERS)
    assert len(parts) >= 2 and parts[1] in LAYERS, f"{module} is in no layer: put it in one of gptlit/{{{','.join(LAYERS)}}}/"
    return LAYERS.index(parts[1])


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    @functools.lru_cache(maxsize=None)
    def floor(m: str) -> int:
        return 1 + max((floor(d) for d in g[m]), default=0)

    return {m: floor(m) for m in g}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_every_import_goes_down():
    up = [f"{m} -> {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not up, f"imports from a lower layer to a higher one: {up}"


def test_nothing_inside_imports_the_package_face():
    inside = [m for m, deps in graph().items() if "gptlit" in deps and not m.endswith(".py")]
    assert not inside, f"modules that import gptlit/__init__ (import the module itself instead): {inside}"


def test_root_command_lines_are_shims():
    """python train.py and the installed gptlit-train run the same function: the root file only calls it."""
    g = graph()
    assert {c: g[c] for c in SHIMS} == {c: {f"gptlit.commands.{Path(c).stem}"} for c in SHIMS}
    assert all(len((ROOT / c).read_text().splitlines()) <= 12 for c in SHIMS)


def test_at_most_seven_floors():
    f = {m: n for m, n in floors(graph()).items() if m not in SHIMS}
    top = max(f.values())
    assert top <= MAX_FLOORS, sorted(f.items(), key=lambda kv: -kv[1])[:8]


def test_readme_layout_table_matches_the_files():
    """docs/development.md's layout table lists every source file of gptlit/ and the command lines, and
    nothing that is not there."""
    text = (ROOT / "docs" / "development.md").read_text()
    listed = set(re.findall(r"^\|\s*`([^`]+\.py)`", text, re.M))
    actual = {str(p.relative_to(ROOT)) for p in (ROOT / "gptlit").rglob("*.py") if p.name != "__init__.py"}
    actual |= {c for c in COMMANDS if (ROOT / c).is_file()}
    assert not actual - listed, f"files missing from the layout table in docs/development.md: {sorted(actual - listed)}"
    assert not listed - actual, f"the layout table names files that do not exist: {sorted(listed - actual)}"


def test_readme_layout_block_matches_the_files_and_layers():
    """The README's layout block names every command line and every layer of gptlit/, top layer first, and
    nothing that is not there."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    files = set(re.findall(r"(?<![\w/])((?:hydra_plugins/)?\w+\.py)\b", block))
    assert files == set(COMMANDS), f"README layout block: missing {sorted(set(COMMANDS) - files)}, " \
                                   f"not there {sorted(files - set(COMMANDS))}"
    layers = re.findall(r"^gptlit/(\w+)/", block, re.M)
    assert layers == LAYERS[::-1], f"README layout block lists the layers {layers}, the code has {LAYERS[::-1]}"


if __name__ == "__main__":
    g = graph()
    f = floors(g)
    for m in sorted(g, key=lambda m: (-f[m], m)):
        print(f"floor {f[m]}  {m}  -> {', '.join(sorted(g[m])) or '-'}")
    cycle = find_cycle(g)
    print("cycle:", " -> ".join(cycle) if cycle else "none", file=sys.stderr)
