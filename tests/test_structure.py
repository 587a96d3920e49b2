"""The package's import graph has no cycles: dependencies between sae_lens_jsae modules run one way.

The graph is read from the source with `ast`, so function-level (lazy) imports count too: a lazy
import hides a circle from Python's import machinery, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "sae_lens_jsae"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The package module `name` refers to: itself, or its longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """Package modules that `module` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: strip `level` parts from the importing package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: package modules it imports}."""
    files = module_files(root, package)
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle (a → … → a) per strongly connected component."""
    return [_cycle_in(graph, set(comp)) for comp in strongly_connected(graph)]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    """'a → b → a', plus the circle's other modules when it takes in more than that one cycle."""
    cycle = _cycle_in(graph, set(component))
    others = sorted(set(component) - set(cycle))
    return " → ".join(cycle) + (f"  (the circle also takes in {', '.join(others)})" if others else "")


KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Cycles not broken yet, each with what breaking it takes (the test fails when one disappears, so it leaves this list)."""


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20, f"found only {len(graph)} modules under {ROOT}"
    components = strongly_connected(graph)
    new = [c for c in components if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "import cycles between sae_lens_jsae modules (function-level imports included):\n" + "\n".join(
        describe(graph, c) for c in new
    )
    gone = set(KNOWN_CYCLES) - {frozenset(c) for c in components}
    assert not gone, f"no longer a cycle, remove it from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def test_cycle_finder_reports_a_planted_cycle(tmp_path):
    """The checker itself: a three-module circle through a function-level import and a relative
    import is found and listed in order; `from pkg import sub` counts as importing pkg.sub."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from pkg import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # into the circle, not part of it
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycles(import_graph(pkg, "pkg")) == []
