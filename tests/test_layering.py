"""The import layering of the project: no cycle between two modules, no layer crossed.

Layers (lowest first): ``bmoe_tf`` imports nothing of ours; ``gating_tflite`` only
``bmoe_tf``; ``experiments`` and ``benchmarks`` ``bmoe_tf`` and ``gating_tflite`` (and
themselves); nothing imports ``tests``.

The graph is read from the source (AST), not by importing: every ``import`` and
``from ... import`` statement of a module counts, at the top of the file and inside
functions and classes alike (a lazy import is still a dependency), relative imports
resolved against the module's package. A package's ``__init__.py`` is a module of its
own (its imports are its edges); ``from pkg import name`` is an edge to the module
``pkg.name`` where that is a module, else to ``pkg`` (a name ``pkg/__init__`` defines).
A lookup through ``importlib`` (the lazy re-exports of ``experiments/<task>/__init__``,
the task registry) is not an import statement and not an edge.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bmoe_tf", "gating_tflite", "experiments", "benchmarks")
OURS = PACKAGES + ("tests",)
#: package -> the packages of ours it may import (besides itself).
ALLOWED = {"bmoe_tf": set(), "gating_tflite": {"bmoe_tf"},
           "experiments": {"bmoe_tf", "gating_tflite"},
           "benchmarks": {"bmoe_tf", "gating_tflite", "experiments"}}


def _modules(root=ROOT, packages=PACKAGES):
    """``{dotted module name: path}`` of every ``.py`` file of ``packages``."""
    out = {}
    for package in packages:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            rel = os.path.relpath(folder, root).replace(os.sep, ".")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                stem = name[:-3]
                out[rel if stem == "__init__" else f"{rel}.{stem}"] = os.path.join(folder, name)
    return out


def _imports(name, path, known):
    """The modules of ours that module ``name`` (at ``path``) imports, as ``{target: line}``."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = {}

    def add(target, line):
        if target.split(".")[0] in OURS:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                full = f"{module}.{alias.name}"
                add(full if full in known else module, node.lineno)
    return found


def import_graph(root=ROOT, packages=PACKAGES):
    """``{module: {imported module of ours: line}}`` over ``packages`` (see the docstring)."""
    modules = _modules(root, packages)
    return {name: _imports(name, path, modules) for name, path in modules.items()}, modules


def find_cycle(graph):
    """One import cycle ``[a, b, ..., a]`` of ``graph`` (module -> iterable of modules), or None."""
    state = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def layer_violations(graph, modules):
    """``["a.b (a/b.py:12) imports c.d: ..."]`` for each import that crosses a layer."""
    out = []
    for name, targets in sorted(graph.items()):
        layer = name.split(".")[0]
        for target, line in sorted(targets.items()):
            other = target.split(".")[0]
            if other == layer:
                continue
            if other == "tests" or other not in ALLOWED[layer]:
                rel = os.path.relpath(modules[name], ROOT)
                allowed = sorted(ALLOWED[layer]) or "nothing of ours"
                out.append(f"{name} ({rel}:{line}) imports {target}: {layer} may import "
                           f"{allowed}")
    return out


def test_no_module_imports_across_a_layer():
    graph, modules = import_graph()
    assert len(modules) > 60  # every package was read
    assert layer_violations(graph, modules) == []


def test_no_import_cycle():
    graph, modules = import_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        steps = [f"{a} ({os.path.relpath(modules[a], ROOT)}:{graph[a][b]}) -> {b}"
                 for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps))


def test_the_walker_sees_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "experiments"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..sub import b\n")
    (pkg / "sub" / "b.py").write_text("import importlib\nimportlib.import_module('x')\n"
                                      "from experiments.sub import a\nimport gating_tflite\n"
                                      "from tests import helpers\n")
    graph, modules = import_graph(str(tmp_path), ("experiments",))
    assert graph["experiments.sub"] == {"experiments.sub.a": 1}
    assert graph["experiments.sub.a"] == {"experiments.sub.b": 2}
    assert set(graph["experiments.sub.b"]) == {"experiments.sub.a", "gating_tflite", "tests"}
    assert find_cycle(graph) == ["experiments.sub.a", "experiments.sub.b", "experiments.sub.a"]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    problems = layer_violations(graph, modules)
    assert len(problems) == 1 and "imports tests" in problems[0]
