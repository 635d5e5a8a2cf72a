"""The project's import graph, read from the source: no cycles, no import up the layers.

Layers, lowest first: `emu` (the machine), `keyhandlers` (debug keys), `xenconsole`
(console, transports, dom0, CLI). A module may import its own layer or a lower one. `emu`
imports no networking (Twisted) and `xenconsole` no emulator (Unicorn). Imports under
`if TYPE_CHECKING:` are annotations only and are not edges.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("emu", "keyhandlers", "xenconsole")
FORBIDDEN = {"emu": ("twisted",), "xenconsole": ("unicorn",)}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, mod: str, is_pkg: bool) -> list[str]:
    """Every dotted name imported anywhere in the module (functions included)."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.extend(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                out.append(base)
                out.extend(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return out


def import_graph(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, set[str]]:
    """Module -> project modules it imports (a `from pkg import name` names pkg.name if
    that is a module, else pkg)."""
    files = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            files[module_name(root, path)] = path
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for name in imported_names(tree, mod, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != mod:
                edges.add(name)
        graph[mod] = edges
    return graph


def external_imports(root: Path, pkg: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((root / pkg).rglob("*.py")):
        mod = module_name(root, path)
        tree = ast.parse(path.read_text(), str(path))
        out[mod] = {n.split(".")[0] for n in imported_names(tree, mod, path.name == "__init__.py")}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(found)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for mod, edges in sorted(graph.items()):
        for dst in sorted(edges):
            if rank[dst.split(".")[0]] > rank[mod.split(".")[0]]:
                bad.append(f"{mod} -> {dst}")
    return bad


@functools.cache
def project_graph() -> dict[str, set[str]]:
    """The project's graph, parsed once for the tests that read it."""
    return import_graph(ROOT)


def test_no_import_cycles() -> None:
    assert cycles(project_graph()) == []


def test_no_import_up_the_layers() -> None:
    assert upward_imports(project_graph()) == []


def test_forbidden_dependencies() -> None:
    bad = []
    for pkg, names in FORBIDDEN.items():
        for mod, ext in external_imports(ROOT, pkg).items():
            bad.extend(f"{mod} imports {n}" for n in names if n in ext)
    assert bad == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_finds_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks can fail: a two-module cycle (one side a function-level import), a
    package whose __init__ imports a module that imports the package, and emu importing
    keyhandlers are all reported; a TYPE_CHECKING import is not an edge."""
    _write(
        tmp_path,
        {
            "emu/__init__.py": "",
            "emu/a.py": "from emu.b import f\n",
            "emu/b.py": "def f():\n    from emu import a\n",
            "emu/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from emu.d import X\n"
            ),
            "emu/d.py": "from emu.c import Y\n",
            "emu/up.py": "import keyhandlers.k\n",
            "keyhandlers/__init__.py": "from keyhandlers import k\n",
            "keyhandlers/k.py": "from keyhandlers import keyhandler\n",
            "xenconsole/__init__.py": "",
        },
    )
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["emu.a", "emu.b"], ["keyhandlers", "keyhandlers.k"]]
    assert upward_imports(graph) == ["emu.up -> keyhandlers.k"]
