"""The code's shape, read from the source (an AST walk, nothing runs):

- no module of nmt/ imports another that imports it back, directly or through others,
  by any import statement (one under TYPE_CHECKING or inside a function included);
- no function in nmt/, stages/ or nmtlab/ is over 60 lines, and no stage's entry point
  (stages/*.py main) over 40: a stage reads params, calls the library, writes outputs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .test_dvc_deps import imported_modules, module_file, module_name

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_STAGE_ENTRY_LINES = 40


def import_graph(package: Path, root: Path) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of `package` it imports (its own package
    __init__ left out: Python runs that first, whoever imports what)."""
    modules = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        targets = {module_name(found, root) for dotted in imported_modules(path, root)
                   if (found := module_file(dotted, root)) is not None}
        graph[name] = {t for t in targets if t in modules and t != name
                       and modules[t].name != "__init__.py"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, stack + [node]):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


def long_functions(path: Path, limit: int, names: set[str] | None = None) -> list[str]:
    """'name (n lines)' of each function of `path` longer than `limit` lines, decorators
    left out; only those called one of `names` when given."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit and (names is None or node.name in names):
                found.append(f"{node.name} ({lines} lines)")
    return found


def test_nmt_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO / "nmt", REPO))
    assert cycle is None, "nmt/ imports in a cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("home", ["nmt", "stages", "nmtlab"])
def test_no_function_is_over_60_lines(home):
    too_long = {}
    for path in sorted((REPO / home).rglob("*.py")):
        if found := long_functions(path, MAX_FUNCTION_LINES):
            too_long[path.relative_to(REPO).as_posix()] = found
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_stage_entry_points_only_wire():
    too_long = {p.name: found for p in sorted((REPO / "stages").glob("*.py"))
                if (found := long_functions(p, MAX_STAGE_ENTRY_LINES, {"main"}))}
    assert not too_long, f"stage entry points over {MAX_STAGE_ENTRY_LINES} lines: {too_long}"


def test_the_checks_find_what_they_look_for(tmp_path):
    """A cycle through a TYPE_CHECKING import and a relative one, and a long function."""
    (tmp_path / "nmt").mkdir()
    (tmp_path / "nmt" / "__init__.py").write_text("from . import a\n")
    (tmp_path / "nmt" / "a.py").write_text("from .b import x\n")
    (tmp_path / "nmt" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nmt.c import y\nx = 1\n")
    (tmp_path / "nmt" / "c.py").write_text("from . import a\ny = 2\n")
    (tmp_path / "nmt" / "d.py").write_text("from . import a\n")
    graph = import_graph(tmp_path / "nmt", tmp_path)
    assert graph["nmt.d"] == {"nmt.a"}
    assert find_cycle(graph) == ["nmt.a", "nmt.b", "nmt.c", "nmt.a"]
    (tmp_path / "nmt" / "c.py").write_text("y = 2\n")
    assert find_cycle(import_graph(tmp_path / "nmt", tmp_path)) is None
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (tmp_path / "nmt" / "long.py").write_text(f"@staticmethod\ndef main():\n{body}")
    assert long_functions(tmp_path / "nmt" / "long.py", 60) == ["main (61 lines)"]
    assert long_functions(tmp_path / "nmt" / "long.py", 61) == []
