"""The house shows the two machines: login/ and task/ never import each other (but for the launcher naming the
task's entry point), rundir/ imports neither, login/ and scoring/ never import torch or vllm, no import
cycles, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hpcgen"
ALLOWED_LOGIN_TO_TASK = {("hpcgen.login.launch", "hpcgen.task.worker")}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


MODULES = _modules()
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _area(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in (
        "login", "task", "rundir", "spec", "scoring")) else "top"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_sides_do_not_import_each_other(name):
    area = _area(name)
    for imp in IMPORTS[name]:
        if not imp.startswith("hpcgen."):
            continue
        target = _area(imp)
        if area == "login" and target == "task":
            assert (name, imp.rsplit(".", 1)[0] if imp not in MODULES else imp) in ALLOWED_LOGIN_TO_TASK or (
                name, imp) in ALLOWED_LOGIN_TO_TASK, f"{name} imports {imp}"
        if area == "task":
            assert target not in ("login", "scoring"), f"{name} imports {imp}"
        if area in ("rundir", "spec"):
            assert target not in ("login", "task", "scoring"), f"{name} imports {imp}"
        if area == "scoring":
            assert target not in ("task",), f"{name} imports {imp}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _area(n) in ("login", "scoring", "rundir", "spec")))
def test_login_side_never_imports_torch_or_vllm(name):
    heavy = {i for i in IMPORTS[name] if i.split(".")[0] in ("torch", "vllm", "ray", "transformers")}
    assert not heavy, f"{name} imports {heavy}"


def test_no_import_cycles():
    graph = {n: {i for i in IMPORTS[n] if i in MODULES and i != n} for n in MODULES}
    for n in list(graph):  # `from hpcgen.x import y` where y is a module names the module, not the package
        graph[n] = {i for i in graph[n] if not (MODULES[i].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m):], m]))
            if m not in state:
                visit(m, [*stack, m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (keep modules under ~400)"
