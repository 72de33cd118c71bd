"""The import graph of ``rg_tracer`` and ``analysis``, read with :mod:`ast` (nothing is imported).

* no import cycle among modules at module level (imports inside functions are deliberate
  lazy imports and do not count);
* nothing under ``analysis/`` imports torch, transformers or gepa_dapo_grn, directly or through
  an ``rg_tracer`` module that loads one of them at module level (function-level imports of
  ``analysis`` modules count here: a lazy import still loads torch when it runs);
* ``import rg_tracer.cli`` loads none of torch, polars, duckdb (checked in a subprocess).

Edges: ``import a.b`` and ``from a.b import name`` import ``a.b``; ``from a import b`` imports
the submodule ``a.b`` when there is one; relative imports are resolved; a package's
``__init__`` is the module named after the package. Imports under ``if TYPE_CHECKING:`` never
run and are skipped; ``importlib.import_module`` calls are not seen.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rg_tracer", "analysis")
HEAVY = ("torch", "transformers", "gepa_dapo_grn")  # all three load torch; analysis must not, even lazily


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    top: set[str] = field(default_factory=set)  # modules (ours or not) imported at module level
    lazy: set[str] = field(default_factory=set)  # imported inside a function body only


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function (``lambda`` included)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)  # the body only runs under a type checker
        else:
            children = list(ast.iter_child_nodes(node))
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, nested) for child in children)


def _targets(node: ast.Import | ast.ImportFrom, module: Module, known: set[str]) -> set[str]:
    """Modules that ``node`` (in ``module``) imports: dotted names, ours resolved to a module."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = module.name.split(".")
        if not module.is_package:
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.add(sub if sub in known else source)  # ``from pkg import submodule`` imports the submodule
    return out


def scan(roots: Iterable[str] = PACKAGES) -> dict[str, Module]:
    """Every module under ``roots`` with its module-level and function-level imports."""
    modules = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            name, is_package = _module_name(path)
            modules[name] = Module(name, path, is_package)
    known = set(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for node, in_function in _imports(tree):
            targets = _targets(node, module, known)
            if in_function:
                module.lazy |= targets
            else:
                module.top |= targets
        module.lazy -= module.top
    return modules


def _ours(name: str, known: Mapping[str, Module]) -> str | None:
    """``name`` or its longest prefix that is one of our modules (``import a.b.C``-style names)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def module_graph(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    """Module-level import edges among our modules (parent packages not implied)."""
    graph = {}
    for name, module in modules.items():
        graph[name] = {t for t in map(lambda n: _ours(n, modules), module.top) if t is not None}
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(start: str) -> None:  # iterative Tarjan, so deep graphs do not hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        path = _path(graph, start, start, members)
        cycles.append(path)
    return sorted(cycles)


def _path(graph: Mapping[str, Iterable[str]], start: str, goal: str, within: set[str]) -> list[str]:
    """Shortest path ``start -> ... -> goal`` (at least one edge) through ``within`` (BFS)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in within or child in previous:
                    continue
                previous[child] = node
                if child == goal:
                    path = [goal]
                    while path[-1] != start or len(path) == 1:
                        path.append(previous[path[-1]])
                    return path[::-1]
                following.append(child)
        frontier = following
    raise AssertionError(f"no path {start} -> {goal}")  # a component always has one


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def heavy_chains(modules: Mapping[str, Module], heavy: Iterable[str] = HEAVY) -> dict[str, list[str]]:
    """For each of our modules that loads a ``heavy`` package when imported: the import chain to it.

    Follows module-level imports, and, as Python does, the ``__init__`` of every parent package
    (``import a.b.c`` runs ``a`` and ``a.b`` first).
    """
    heavy = set(heavy)

    def steps(name: str) -> Iterable[str]:
        yield from (p for p in _parents(name) if p in modules)
        for target in sorted(modules[name].top):
            top = target.split(".")[0]
            if top in heavy:
                yield top
                continue
            ours = _ours(target, modules)
            if ours is not None:
                yield from (p for p in _parents(ours) if p in modules)
                yield ours

    chains: dict[str, list[str]] = {}
    for start in sorted(modules):  # BFS per module: the shortest chain
        previous: dict[str, str | None] = {start: None}
        frontier, found = [start], None
        while frontier and found is None:
            following = []
            for node in frontier:
                for nxt in steps(node):
                    if nxt in previous:
                        continue
                    previous[nxt] = node
                    if nxt in heavy:
                        found = nxt
                        break
                    following.append(nxt)
                if found:
                    break
            frontier = following
        if found is not None:
            chain = [found]
            while previous[chain[-1]] is not None:
                chain.append(previous[chain[-1]])
            chains[start] = chain[::-1]
    return chains


def analysis_violations(modules: Mapping[str, Module], heavy: Iterable[str] = HEAVY) -> list[str]:
    """``analysis`` modules that import a heavy package, directly or via a module that loads one."""
    heavy = set(heavy)
    loads = heavy_chains(modules, heavy)
    found = []
    for name in sorted(modules):
        if name.split(".")[0] != "analysis":
            continue
        module = modules[name]
        for target in sorted(module.top | module.lazy):
            where = "" if target in module.top else " (inside a function)"
            if target.split(".")[0] in heavy:
                found.append(f"{name}{where} -> {target}")
                continue
            ours = _ours(target, modules)
            if ours in loads and ours.split(".")[0] != "analysis":  # analysis modules are checked themselves
                found.append(f"{name}{where} -> " + " -> ".join(loads[ours]))
    return found


# ---------------------------------------------------------------- the checkers, on planted graphs


def test_find_cycles_reports_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_scan_resolves_relative_submodule_and_function_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from . import helper\nfrom .. import other\n")
    (pkg / "sub" / "helper.py").write_text(
        "from typing import TYPE_CHECKING\nimport polars\nif TYPE_CHECKING:\n    import pkg.other\n"
        "def f():\n    from ..other import thing\n    import torch\n")
    (pkg / "other.py").write_text("import pkg.sub.helper as h\nfrom pkg import sub\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    modules = scan(["pkg"])
    assert modules["pkg"].top == {"pkg.sub.helper"}
    assert modules["pkg.sub"].top == {"pkg.sub.helper", "pkg.other"}
    assert modules["pkg.sub.helper"].top == {"typing", "polars"}
    assert modules["pkg.sub.helper"].lazy == {"pkg.other", "torch"}
    assert modules["pkg.other"].top == {"pkg.sub.helper", "pkg.sub"}
    assert find_cycles(module_graph(modules)) == [["pkg.other", "pkg.sub", "pkg.other"]]


def test_heavy_checks_report_the_chain():
    modules = {
        "rg_tracer": Module("rg_tracer", Path(), True),
        "rg_tracer.light": Module("rg_tracer.light", Path(), False, top={"json", "rg_tracer.mid"}),
        "rg_tracer.mid": Module("rg_tracer.mid", Path(), False, top={"torch.nn"}),
        "rg_tracer.pkg": Module("rg_tracer.pkg", Path(), True, top={"rg_tracer.mid"}),
        "rg_tracer.pkg.leaf": Module("rg_tracer.pkg.leaf", Path(), False),
        "rg_tracer.lazy": Module("rg_tracer.lazy", Path(), False, lazy={"torch"}),
        "analysis": Module("analysis", Path(), True),
        "analysis.a": Module("analysis.a", Path(), False, top={"rg_tracer.light"}),
        "analysis.b": Module("analysis.b", Path(), False, lazy={"rg_tracer.pkg.leaf"}),
        "analysis.c": Module("analysis.c", Path(), False, top={"rg_tracer.lazy", "polars"}),
        "analysis.d": Module("analysis.d", Path(), False, lazy={"transformers"}),
    }
    assert heavy_chains(modules)["rg_tracer.light"] == ["rg_tracer.light", "rg_tracer.mid", "torch"]
    assert "rg_tracer.lazy" not in heavy_chains(modules)
    assert analysis_violations(modules) == [
        "analysis.a -> rg_tracer.light -> rg_tracer.mid -> torch",
        "analysis.b (inside a function) -> rg_tracer.pkg.leaf -> rg_tracer.pkg -> rg_tracer.mid -> torch",
        "analysis.d (inside a function) -> transformers",
    ]


# ---------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def modules():
    return scan()


def test_the_scan_sees_the_tree(modules):
    assert {"rg_tracer", "rg_tracer.cli", "analysis", "analysis.db.store"} <= set(modules)
    assert "torch" in heavy_chains(modules)["rg_tracer.runtime.llama_step"]


def test_no_module_level_import_cycle(modules):
    cycles = find_cycles(module_graph(modules))
    assert not cycles, "module-level import cycle(s):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_analysis_never_loads_torch(modules):
    found = analysis_violations(modules)
    assert not found, "analysis loads a heavy package (import chain):\n" + "\n".join(found)


def test_cli_package_imports_no_heavy_library():
    code = ("import rg_tracer.cli, sys; "
            "print(sorted(m for m in ('torch', 'polars', 'duckdb') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"import rg_tracer.cli loads {done.stdout.strip()}"
