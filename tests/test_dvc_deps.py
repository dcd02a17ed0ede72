"""dvc.yaml lists, for each stage, exactly the project's Python files that the stage runs.

A stage's code is its `python -m stages.<name>` module and every project module that
imports, transitively (any import statement, also one inside a function). A file
missing from the deps would leave the stage cached on stale code after an edit; an
extra one would rerun it for nothing. Data deps (folders, .tsv, ...) are not checked.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nmt", "stages", "nmtlab")  # the project's import roots


def module_file(name: str, root: Path) -> Path | None:
    """The project file of a dotted module name, or None when it is not the project's."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Dotted names of every module an import statement of `path` may load."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")  # `import a.b.c` runs a, a.b and a.b.c
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            parts = base.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return names


def has_code(path: Path) -> bool:
    """False for a file that is only a docstring (an empty package __init__)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def closure(entry: Path, root: Path = REPO) -> set[str]:
    """Repo-relative paths of `entry` and every project file it imports, transitively."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path, root):
            found = module_file(name, root)
            if found is not None:
                todo.append(found)
    return {p.relative_to(root).as_posix() for p in seen if has_code(p)}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def entry_module(cmd: str) -> Path:
    match = re.search(r"python -m (stages\.\w+)", cmd)
    assert match, f"stage command {cmd!r} does not run a stages module"
    path = module_file(match.group(1), REPO)
    assert path is not None, f"{match.group(1)}: no such module"
    return path


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_list_exactly_its_import_closure(name):
    stage = stages()[name]
    code = closure(entry_module(stage["cmd"]))
    listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
    missing, extra = sorted(code - listed), sorted(listed - code)
    assert not missing and not extra, (
        f"dvc.yaml stage {name}: add {missing} to its deps, remove {extra}")


def test_closure_follows_relative_absolute_and_nested_imports(tmp_path):
    """The closure logic itself, on a made-up project: from-imports of modules, relative
    imports, an import inside a function; not the stdlib, not an unimported module, not a
    docstring-only __init__."""
    (tmp_path / "nmt").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "nmt" / "__init__.py").write_text('"""docstring only."""\n')
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "go.py").write_text("import os\nfrom nmt import a\n")
    (tmp_path / "nmt" / "a.py").write_text("from .b import thing\n")
    (tmp_path / "nmt" / "b.py").write_text("def thing():\n    import nmt.c\n")
    (tmp_path / "nmt" / "c.py").write_text("x = 1\n")
    (tmp_path / "nmt" / "unused.py").write_text("x = 1\n")
    assert closure(tmp_path / "stages" / "go.py", tmp_path) == {
        "stages/go.py", "nmt/a.py", "nmt/b.py", "nmt/c.py"}
