"""The package graph: no import cycle between the project's modules, and every module imports on
its own, first, in a fresh interpreter.

Two checks, because each sees what the other cannot:
- the static graph (``ast``) of what each module imports when it is first imported (module body,
  class bodies, ``if``/``try``/``with`` blocks at that level; not function bodies, which run later,
  and not ``if TYPE_CHECKING:`` blocks, which never run). A cycle there works or breaks depending on
  which module happens to be imported first, so none is allowed;
- a real import of each module as the first project module of an interpreter (third-party modules
  stay loaded between modules, since only the project's own import order is under test), which
  catches what the graph does not model (``importlib``, ``__getattr__``, side effects).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ftfsearch", "ingest", "deploy", "bench")
"""The graph covers these; the import check the first three (bench's modules are programs)."""


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_statements(node.body)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that importing ``name`` executes last (its longest known prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports at import time."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_time_statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from P import n`` runs P.n when n is a submodule, else P itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges.update(t for t in (_resolve(t, modules) for t in targets) if t is not None and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in group)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return [*path, start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:  # every way on is seen: close at the first seen one
            w = nxt[0]
            return [*path[path.index(w):], w]
        path.append(step)
        seen.add(step)


def test_the_package_graph_has_no_import_cycle() -> None:
    modules = project_modules(REPO, PACKAGES)
    assert {"ftfsearch.cli", "ftfsearch.model.clip", "ftfsearch.model.loading", "ingest.pipeline"} <= set(modules)
    graph = import_graph(modules)
    assert "ftfsearch.model.sources" in graph["ftfsearch.model.clip"]  # the graph sees real edges
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """The checker itself, on a package with a cycle through a relative import and a package
    __init__, an import inside a function (runs later: no edge) and a TYPE_CHECKING one (never runs)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "b.py").write_text("import pkg.sub\n")
    (pkg / "sub" / "c.py").write_text("from __future__ import annotations\nfrom ..a import x\n")
    (pkg / "late.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.lazy\ndef f():\n    import pkg.lazy\n"
    )
    (pkg / "lazy.py").write_text("import pkg.late\n")
    graph = import_graph(project_modules(tmp_path, ["pkg"]))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.late"] == set() and graph["pkg.lazy"] == {"pkg.late"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub", "pkg.sub.c", "pkg.a"]]


FIRST_IMPORT = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("ftfsearch", "ingest", "deploy")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
print(json.dumps(failures))
"""


def test_every_module_imports_first_on_its_own() -> None:
    names = [n for n in project_modules(REPO, ("ftfsearch", "ingest", "deploy")) if not n.endswith("__main__")]
    proc = subprocess.run([sys.executable, "-c", FIRST_IMPORT, json.dumps(names)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {}


# -- the layers (../shared/DESIGN.md, "Layers"): which room may use which -------------------------


def _all_import_statements(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import of a module, function bodies included: a layer rule is about what a module
    uses at all, not only at import time (``TYPE_CHECKING`` imports too: they name a dependency)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def uses_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (absolute imports; the packages use no relative ones)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in _all_import_statements(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                assert not node.level, f"{name}: relative import"
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges.update(t for t in (_resolve(t, modules) for t in targets) if t is not None and t != name)
        graph[name] = edges
    return graph


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


READ_PATH = ("ftfsearch.search", "ftfsearch.examples", "ftfsearch.chips", "ftfsearch.export", "ftfsearch.labels")
SURFACES = ("ftfsearch.cli", "ftfsearch.web")
LAYER_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    # (rule, modules under these packages, except these, must not use these)
    ("ingest never imports search (the write path never imports the read path)", ("ingest",), (), READ_PATH),
    ("the library never imports the CLI or web", ("ftfsearch", "ingest"), SURFACES, SURFACES),
    ("the runtime never imports training", ("ftfsearch", "ingest"), ("ftfsearch.training", "ftfsearch.cli"),
     ("ftfsearch.training",)),
    ("model, store and rerank know nothing of each other", ("ftfsearch.model",), (), ("ftfsearch.store", "ftfsearch.rerank")),
    ("model, store and rerank know nothing of each other", ("ftfsearch.store",), (), ("ftfsearch.model", "ftfsearch.rerank")),
    ("model, store and rerank know nothing of each other", ("ftfsearch.rerank",), (), ("ftfsearch.model", "ftfsearch.store")),
    ("the read and write paths never reach up to the commands", ("ingest", *READ_PATH), (), ("ftfsearch.commands",)),
    ("the surfaces resolve no sources: the command layer does (ftfsearch.commands.sources)",
     ("ftfsearch.cli", "ftfsearch.api", "ftfsearch.web"), (), ("ingest.sources", "ingest.stac", "ingest.stac_api")),
    ("the pipeline and batches read sources through the Source protocol, never one kind of source",
     ("ingest.pipeline", "ingest.batch"), (), ("ingest.stac", "ingest.stac_api", "ingest.stack")),    ("the request models a query imports use nothing of the write path (ingest's are in commands.ingest_requests)",
     ("ftfsearch.commands.requests",), (), ("ingest",)),
]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for rule, packages, exempt, forbidden in LAYER_RULES:
        for module, uses in sorted(graph.items()):
            if _under(module, *packages) and not _under(module, *exempt):
                found += [f"{rule}: {module} imports {used}" for used in sorted(uses) if _under(used, *forbidden)]
    return found


def test_the_layers_point_down() -> None:
    modules = project_modules(REPO, ("ftfsearch", "ingest"))
    graph = uses_graph(modules)
    assert "ftfsearch.model.loading" in graph["ftfsearch.commands.local"]  # a function-level import is seen
    assert not layer_violations(graph), "\n".join(layer_violations(graph))


def test_the_layer_check_finds_a_backward_import() -> None:
    graph = {"ingest.pipeline": {"ftfsearch.search"}, "ftfsearch.search": {"ftfsearch.web.app"},
             "ftfsearch.web.app": {"ftfsearch.search"}, "ftfsearch.cli": {"ftfsearch.web.app"}}
    assert layer_violations(graph) == [
        "ingest never imports search (the write path never imports the read path): ingest.pipeline imports ftfsearch.search",
        "the library never imports the CLI or web: ftfsearch.search imports ftfsearch.web.app",
    ]
