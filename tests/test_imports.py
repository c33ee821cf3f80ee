"""The titan_jepa modules import each other without a cycle.

Every module of titan_jepa/ is parsed with ``ast`` (nothing is imported). An edge A -> B is
any ``import titan_jepa.B`` / ``from titan_jepa.B import ...`` / ``from titan_jepa.pkg import
B`` (B a module) / relative import in A: module-level and function-level imports both count,
and so do imports under ``if TYPE_CHECKING`` (a cycle there is one refactor away from real).
Importing a submodule also runs its packages' ``__init__``: an edge to ``a.b.c`` adds edges to
``a.b`` and ``a`` where those are part of titan_jepa, but for a module of those packages
itself (their ``__init__`` is what imports it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "titan_jepa"


def _module_name(path: Path) -> str:
    parts = ("titan_jepa",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from .x import y / from .. import z
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [origin] + [f"{origin}.{a.name}" for a in node.names]
            for t in targets:
                # the module itself (a name imported from a module is not a module) and
                # the packages it runs on the way
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    # a package's own modules run inside its __init__ (already running)
                    ancestor = mod.startswith(name + ".") and i < len(parts)
                    if name in files and name != mod and not ancestor:
                        graph[mod].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "titan_jepa.train" in graph and "titan_jepa.models.llama" in graph
    # a module-level edge, a function-level edge (inside create_seed_checkpoint) and a
    # from-package-import-module edge
    assert "titan_jepa.checkpoint.weights" in graph["titan_jepa.checkpoint"]
    assert "titan_jepa.data.tokenizer" in graph["titan_jepa.checkpoint.export"]
    assert "titan_jepa.eval.scorers" in graph["titan_jepa.eval.run"]
    # and the cycle finder finds a planted cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_package_imports_no_distributed_and_no_config():
    """titan_jepa/models is plain PyTorch: no torch.distributed, no config-side modules."""
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("torch.distributed"), (path.name, n)
                assert not n.startswith("titan_jepa") or n.startswith("titan_jepa.models"), (path.name, n)


def _reads_before_local_import(path: Path) -> list[str]:
    """Functions that read a name before a function-level ``import`` binds it: the import
    makes the name local to the whole function, so the earlier read raises UnboundLocalError
    (e.g. ``torch.backends...`` above ``import torch._dynamo``), on a path CPU tests may not run."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        bound = {}  # name -> first line a function-level import binds it
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    name = a.asname or a.name.split(".")[0]
                    bound[name] = min(bound.get(name, node.lineno), node.lineno)
        for node in ast.walk(fn):
            if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in bound
                    and node.lineno < bound[node.id]):
                found.append(f"{path.name}:{node.lineno} {fn.name}() reads '{node.id}' before "
                             f"the import on line {bound[node.id]}")
    return found


def test_no_name_is_read_before_a_function_level_import_binds_it(tmp_path):
    files = [*ROOT.rglob("*.py"), *(ROOT.parent / "tools").glob("*.py")]
    found = [f for p in files for f in _reads_before_local_import(p)]
    assert not found, "\n".join(found)
    bug = tmp_path / "_import_check.py"
    bug.write_text("def f():\n    torch.ones(1)\n    import torch._dynamo\n")
    assert _reads_before_local_import(bug) == ["_import_check.py:2 f() reads 'torch' before the import on line 3"]
