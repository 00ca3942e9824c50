"""eva_core's import graph has no cycles, between modules or between subpackages (models <-> checkpoint ...).

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` / ``from ... import``
anywhere in a module counts, including the ones inside functions (lazy imports still tie two packages
together). Imports under ``if TYPE_CHECKING:`` are left out because they never run. Relative imports
are resolved against the importing module's package; ``from pkg import name`` points at the submodule
``pkg.name`` when that is a module, else at ``pkg``. An import of ``a.b.c`` is an edge to ``a.b.c``
only: the parent packages it runs first are not edges, since a module importing a sibling through
its own package would otherwise always look like a cycle.

Subpackage level: each module belongs to its top-level subpackage (``eva_core.models.eva`` ->
``models``); the root ``eva_core/__init__.py`` is its own node ``eva_core`` (it imports
``models`` and ``checkpoint`` lazily to offer ``create_model(checkpoint_path=...)``).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "eva_core" / "eva_core"
ROOT = "eva_core"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    skip |= {id(n) for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(target module, line)`` for every eva_core import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in modules else base, node.lineno))
    return [(t, line) for t, line in out if (t == ROOT or t.startswith(ROOT + ".")) and t != name]


def build_graph() -> dict[str, dict[str, list[str]]]:
    """``{module: {imported module: ["file:line", ...]}}`` over eva_core's modules."""
    modules = all_modules()
    graph: dict[str, dict[str, list[str]]] = {m: defaultdict(list) for m in modules}
    for name, path in modules.items():
        for target, line in imports_of(name, path, modules):
            while target not in modules and "." in target:  # ``import eva_core.x.attr``-style leftovers
                target = target.rpartition(".")[0]
            site = f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
            if target in modules and target != name and site not in graph[name][target]:
                graph[name][target].append(site)
    return graph


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def package_graph(graph: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for src, targets in graph.items():
        for dst, sites in targets.items():
            a, b = subpackage(src), subpackage(dst)
            if a != b:
                out[a][b] += [f"{src} -> {dst} ({s})" for s in sites]
    return out


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or ``None`` (iterative DFS, colours)."""
    colour: dict[str, int] = {}
    for start in sorted(graph):
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(graph.get(start, {}))))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not colour.get(nxt):
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(graph.get(nxt, {})))))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:]):
        lines.append(f"  {a} -> {b}: " + "; ".join(graph[a][b][:3]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the checker itself
def test_cycle_finder_reports_a_planted_package_cycle_with_its_import_sites():
    graph = {"eva_core.models.registry": {"eva_core.checkpoint.loader": ["models/registry.py:96"]},
             "eva_core.checkpoint.loader": {"eva_core.models.eva": ["checkpoint/loader.py:12"]},
             "eva_core.models.eva": {}}
    assert find_cycle(graph) is None  # no module-level cycle ...
    pkg = package_graph(graph)
    cycle = find_cycle(pkg)
    assert cycle == ["checkpoint", "models", "checkpoint"]  # ... but models <-> checkpoint
    text = describe(cycle, pkg)
    assert "models/registry.py:96" in text and "checkpoint/loader.py:12" in text


def test_relative_and_function_level_imports_are_resolved(tmp_path):
    modules = all_modules()
    edges = {t for t, _ in imports_of("eva_core.models.eva", modules["eva_core.models.eva"], modules)}
    assert "eva_core.layers.attention" in edges and "eva_core.layers.window" in edges  # ``from ..layers.x``
    root = {t for t, _ in imports_of(ROOT, modules[ROOT], modules)}
    assert {"eva_core.models.registry", "eva_core.checkpoint.loader"} <= root  # imports inside functions
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from eva_core.engine import x\n"
                   "def f():\n    import eva_core.models.eva\n")
    assert [t for t, _ in imports_of("eva_core.fake", src, modules)] == ["eva_core.models.eva"]


# ----------------------------------------------------------------------------- eva_core
def test_eva_core_has_no_import_cycle_between_modules():
    graph = build_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between modules:\n" + describe(cycle, graph)


def test_eva_core_has_no_import_cycle_between_subpackages():
    pkg = package_graph(build_graph())
    cycle = find_cycle(pkg)
    assert cycle is None, "import cycle between subpackages:\n" + describe(cycle, pkg)


@pytest.mark.parametrize("a,b", [("models", "checkpoint"), ("checkpoint", "models")])
def test_models_and_checkpoint_meet_only_in_layers(a, b):
    pkg = package_graph(build_graph())
    assert b not in pkg[a], f"{a} imports {b}: " + "; ".join(pkg[a][b])
    assert "layers" in pkg[a]
    assert set(pkg["layers"]) == set(), f"layers imports {dict(pkg['layers'])}"  # layers is a leaf
