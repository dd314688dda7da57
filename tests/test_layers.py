"""The package's import graph, read from the source (ast, every import statement, module level or inside a
function): MLflow has one door (``argbench/track``), Optuna one (``argbench/search``), and no argbench modules
import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import argbench

PACKAGE = Path(argbench.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports anywhere in it at run time: ``from P import x`` counts as ``P.x`` when that is a
    module, else as ``P``. Imports under ``if TYPE_CHECKING:`` are for annotations only and are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []  # ast.walk has not entered it yet
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: ``.`` is the module's own package, ``..`` its parent
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """{argbench module: the modules it imports, third-party ones included}."""
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def importers_of(graph: dict[str, set[str]], library: str) -> set[str]:
    return {name for name, imported in graph.items() if any(_top(m) == library for m in imported)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's algorithm,
    over the edges between argbench modules as written: importing ``a.b.c`` is an edge to ``a.b.c``, not to the
    packages ``a`` and ``a.b`` that Python initialises first."""
    edges = {m: sorted(i for i in imported if i in graph) for m, imported in graph.items()}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "argbench.track.tracker" in graph["argbench.experiments.runner"]
    assert "argbench.track.tracker" in graph["argbench.eval.baselines"]  # imported inside log_baseline
    assert "argbench.experiments.registry" in graph["argbench.track.run_import"]


def test_mlflow_is_imported_only_under_track():
    importers = importers_of(import_graph(), "mlflow")
    assert importers and all(m.startswith("argbench.track.") for m in importers), sorted(importers)


def test_optuna_is_imported_only_under_search():
    importers = importers_of(import_graph(), "optuna")
    assert importers and all(m.startswith("argbench.search.") for m in importers), sorted(importers)


def test_no_import_cycle_between_argbench_modules():
    assert cycles(import_graph()) == []


def test_relative_imports_resolve_to_modules_or_their_package(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import other\nfrom .. import paths, VERSION\n\n\ndef f():\n"
                    "    from ..track.store import Store\n")
    known = {"argbench.sub.other", "argbench.paths", "argbench.track.store"}
    assert _imports(path, "argbench.sub.mod", known) == known | {"argbench"}


def test_cycles_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c", "numpy"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
