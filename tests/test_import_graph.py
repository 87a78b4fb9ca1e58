"""The package's import graph, read from the source (every import statement, at module level or inside a
function): no circles, imports only point down the layers, and no import hidden inside a function except
of optional dependencies. Edges are what the statements name (`from a.b import c` -> a.b.c when c is a
module, else a.b), not the implicit imports of parent packages' __init__ files."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer -> module prefixes it may never import (imports only point down)
BELOW = {
    "zoneout.nn.csrc": ("zoneout",),  # torch only
    "zoneout.nn.reference": ("zoneout.nn.fused", "zoneout.nn.dispatch", "zoneout.nn.lstm", "zoneout.nn.gru",
                             "zoneout.nn.rnn", "zoneout.nn.cells", "zoneout.nn.bn_lstm", "zoneout.nn.csrc"),
    "zoneout.nn.fused": ("zoneout.nn.dispatch", "zoneout.nn.lstm", "zoneout.nn.gru", "zoneout.nn.rnn",
                         "zoneout.nn.cells", "zoneout.nn.bn_lstm", "zoneout.nn.stack", "zoneout.nn.directions"),
    "zoneout.nn": ("zoneout.train", "zoneout.tasks", "zoneout.models", "zoneout.data", "zoneout.regularizers",
                   "zoneout.config_check", "zoneout.resolvers", "zoneout.loggers", "zoneout.checkpoint", "zoneout.toys"),
}
# function-local imports allowed: optional dependencies and what imports them
OPTIONAL = {"zoneout.nn.fused.triton_backend"}


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in (root / "zoneout").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported zoneout module, inside a function?) for every import statement of `path`."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, id(node) in nested))
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    known = modules(root)
    edges, local = {}, []
    for name, path in known.items():
        edges[name] = set()
        for target, inside_function in imports(name, path, known):
            edges[name].add(target)
            if inside_function:
                local.append((name, target))
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    edges, _ = graph()
    assert cycles(edges) == []


def test_imports_only_point_down():
    edges, _ = graph()
    wrong = [(source, target) for source, targets in edges.items() for target in targets
             for layer, forbidden in BELOW.items()
             if (source == layer or source.startswith(layer + ".")) and target.startswith(forbidden)
             and not target.startswith(layer + ".") and target != layer]
    assert wrong == []


def test_no_imports_hidden_in_functions_but_optional_dependencies():
    _, local = graph()
    assert [(source, target) for source, target in local if target not in OPTIONAL] == []


def test_the_checker_sees_circles_and_function_level_imports(tmp_path):
    """The checks above would fail on the knots they exist for (a circle closed by an import inside a
    function, as the layers once had)."""
    package = tmp_path / "zoneout"
    (package / "nn").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nn" / "__init__.py").write_text("")
    (package / "nn" / "lstm.py").write_text("from zoneout.nn.fused import lstm_layer\n")
    (package / "nn" / "fused.py").write_text("def f():\n    from zoneout.nn import lstm\n")
    edges, local = graph(tmp_path)
    assert cycles(edges) == [["zoneout.nn.fused", "zoneout.nn.lstm"]]
    assert local == [("zoneout.nn.fused", "zoneout.nn.lstm")]


@pytest.mark.parametrize("statement, expected", [
    ("from . import dispatch", "zoneout.nn.dispatch"),
    ("from .fused import settings", "zoneout.nn.fused.settings"),
    ("from ..cpuinfo import cpu_vendor", "zoneout.cpuinfo"),
    ("import zoneout.nn.fused.masks as masks", "zoneout.nn.fused.masks"),
])
def test_relative_and_dotted_imports_resolve(tmp_path, statement, expected):
    path = tmp_path / "lstm.py"
    path.write_text(statement + "\n")
    assert imports("zoneout.nn.lstm", path, modules()) == [(expected, False)]
