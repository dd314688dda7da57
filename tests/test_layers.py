"""The package's import graph, read from the source (ast, every import statement, module level or inside a
function): every import follows the package order of ``docs/architecture.md``, MLflow has one door
(``argbench/track``), Optuna one (``argbench/search``), and no argbench modules or packages import each other in a
cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import argbench

PACKAGE = Path(argbench.__file__).resolve().parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# The package order, lowest first: a module imports only modules of its own layer or of the layers before it.
# ``argbench`` is the package's own ``__init__``; errors, paths and config are plain values every package reads.
LAYERS = (
    ("argbench", "errors", "paths", "config"),
    ("data",),
    ("model",),
    ("eval",),  # the trainer evaluates every epoch
    ("train",),  # fit(cfg, corpus, hooks): nothing below here knows of MLflow or Optuna
    ("track",),  # the only door to MLflow, a hook on the trainer
    ("experiments",),  # a run of a registry entry is a tracked run
    ("analysis",),  # significance tables group runs by registry group
    ("search",),  # the only door to Optuna; the grid study reports its cells' significance tables
    ("bench",),
    ("cli", "__main__"),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}

# Known crossings of the order, each to be removed by a following change: none is left. Any crossing not listed here
# fails the test, and an entry whose crossing is gone fails it too (delete the entry).
KNOWN_CROSSINGS: set[tuple[str, str]] = set()


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


def package_of(module: str) -> str:
    """The layer name of an argbench module: its package (``argbench.track.store`` → ``track``), a top-level module's
    own name (``argbench.config`` → ``config``), or ``argbench`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def crossings(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every (importer, imported) pair of argbench modules whose imported module's layer comes after the
    importer's."""
    return {(name, module) for name, imported in graph.items() for module in imported
            if _top(module) == "argbench" and RANK[package_of(module)] > RANK[package_of(name)]}


def package_graph(graph: dict[str, set[str]], skip=frozenset()) -> dict[str, set[str]]:
    """{argbench package: the other argbench packages its modules import}, leaving out the edges in ``skip``."""
    packages: dict[str, set[str]] = {package_of(name): set() for name in graph}
    for name, imported in graph.items():
        packages[package_of(name)].update(package_of(m) for m in imported if _top(m) == "argbench"
                                          and package_of(m) != package_of(name) and (name, m) not in skip)
    return packages


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


def test_the_graph_sees_function_level_imports_and_leaves_out_annotation_ones(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from argbench.cli.app import main\n\n\n"
                    "def f():\n    from argbench.track.tracker import tracked_run\n")
    known = {"argbench.cli.app", "argbench.track.tracker"}
    assert _imports(path, "argbench.eval.mod", known) == {"typing", "argbench.track.tracker"}
    graph = import_graph()
    assert "argbench.experiments.run_import" in graph["argbench.cli.ablation"]  # imported inside cmd_import


def test_every_package_has_a_place_in_the_order():
    assert {package_of(name) for name in import_graph()} <= set(RANK)


def test_the_order_is_the_one_drawn_in_the_architecture_page():
    order = " → ".join(", ".join(p for p in layer if p not in ("argbench", "__main__")) for layer in LAYERS)
    assert order in ARCHITECTURE.read_text(), order


def test_every_import_follows_the_package_order():
    found = crossings(import_graph())
    new = sorted(found - KNOWN_CROSSINGS)
    assert not new, "imports against the package order (move the shared piece down, see docs/architecture.md):\n" + \
        "\n".join(f"  {a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_CROSSINGS - found)
    assert not gone, f"known crossings that no longer exist: delete them from KNOWN_CROSSINGS: {gone}"


def test_the_order_check_finds_a_planted_crossing():
    graph = {"argbench.eval.x": {"argbench.track.tracker", "argbench.data.tasks", "numpy"},
             "argbench.track.tracker": {"argbench.eval.x"}, "argbench.__main__": {"argbench.cli.app"},
             "argbench.config": {"argbench.errors", "argbench"}}
    assert crossings(graph) == {("argbench.eval.x", "argbench.track.tracker")}


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(import_graph(), skip=KNOWN_CROSSINGS)) == []


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
