"""The package's structure, checked from its source with ``ast`` (nothing is imported):

* no import circles between its modules (type-only imports under ``if TYPE_CHECKING:`` and
  imports inside functions count too: a circle is a design fault even when Python survives it);
* one owner per piece of state: no module but the owner's assigns attributes of the callback
  (``InterpretationGeneralization``) or of its run state (``MonitorRun``).

Each checker also runs on a small synthetic package, so that a checker that finds nothing
cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_saliency"

#: Import circles known at the time this check was added, OUTSIDE callbacks/, each as the set
#: of its modules; a circle inside one of them is tolerated (and printed), any other fails.
#: The report's circle is being removed on another branch: empty this after that merge.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()

#: Classes whose attributes only their own module may assign, and that module.
OWNERS: dict[str, str] = {
    "InterpretationGeneralization": "lightning_saliency/callbacks/interpretation.py",
    "MonitorRun": "lightning_saliency/callbacks/_run.py",
    "MonitorSettings": "lightning_saliency/callbacks/_settings.py",
}
#: Variable names that stand for the callback whatever their annotation.
CALLBACK_NAMES = {"cb": "InterpretationGeneralization", "callback": "InterpretationGeneralization"}


# ---------------------------------------------------------------------- the import graph
def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Module name -> file, for every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _base(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _targets(node: ast.AST, name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            full = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                         if ".".join(parts[:i]) in known), None)  # fmt: skip
            if full is not None:
                yield full
    elif isinstance(node, ast.ImportFrom):
        base = _base(node, name, path)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in known:  # ``from pkg import submodule``
                yield sub
            elif base in known:
                yield base


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its source."""
    known = modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(node, name, path, known)}
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of ``graph``: one path ``[a, b, ..., a]`` per strongly connected component
    of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
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
                comp = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    components.append(comp)
    return [_loop(graph, comp) for comp in components]


def _loop(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """One circle through the component's first module (breadth-first: the shortest)."""
    first = min(comp)
    paths = {first: [first]}
    queue = [first]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & comp):
            if child == first:
                return [*paths[node], first]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no circle through {first}")  # a component always has one


def _split_known(found: list[list[str]]) -> tuple[list[list[str]], list[list[str]]]:
    known = [c for c in found if any(set(c) <= k for k in KNOWN_CYCLES)]
    return [c for c in found if c not in known], known


# ---------------------------------------------------------------------- foreign assignments
def _tracked(func: ast.AST) -> dict[str, str]:
    """Parameter name -> owned class, for a function's parameters annotated with one."""
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {}
    a = func.args
    out = {}
    for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
        text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        owner = next((cls for cls in OWNERS if cls in text), None)
        if owner is not None:
            out[arg.arg] = owner
    return out


def _root_attribute(target: ast.AST) -> tuple[str, str] | None:
    """``(name, attr)`` when ``target`` is ``name.attr`` or reaches into it
    (``name.attr[i]``, ``name.attr.x``); tuple targets are unpacked by the caller."""
    node, attr = target, None
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        if isinstance(node, ast.Attribute):
            attr = node.attr
        node = node.value
    if isinstance(node, ast.Name) and attr is not None:
        return node.id, attr
    return None


def _assigned(node: ast.AST) -> Iterator[ast.AST]:
    """Every target a statement assigns or deletes (unpacking tuples and lists)."""
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Delete):
        targets = list(node.targets)
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        targets = [node.target]
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        targets = [node.optional_vars]
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets.extend(t.elts)
        else:
            yield t


def _setattr_call(node: ast.AST) -> str | None:
    """The object name of ``setattr(name, ...)``, ``delattr(name, ...)`` or
    ``object.__setattr__(name, ...)``."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    f = node.func
    named = isinstance(f, ast.Name) and f.id in ("setattr", "delattr")
    dunder = isinstance(f, ast.Attribute) and f.attr in ("__setattr__", "__delattr__")
    first = node.args[0]
    return first.id if (named or dunder) and isinstance(first, ast.Name) else None


def _scopes(tree: ast.AST) -> Iterator[tuple[ast.AST, dict[str, str]]]:
    """Each function (and the module) with the names tracked in it (enclosing ones too)."""
    todo: list[tuple[ast.AST, dict[str, str]]] = [(tree, dict(CALLBACK_NAMES))]
    while todo:
        scope, names = todo.pop()
        yield scope, names
        todo.extend((f, {**names, **_tracked(f)}) for f in _walk(scope) if _is_function(f))


def _is_function(node: ast.AST) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))


def _walk(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a scope, down to (and including) the functions nested in it, not into
    them."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not _is_function(node):
            todo.extend(ast.iter_child_nodes(node))


def foreign_assignments(root: Path, package: str = PACKAGE) -> list[str]:
    """``"path:line: name.attr (Class)"`` for every assignment of an owned class's attribute
    outside its owner's module."""
    found = []
    for path in modules(root, package).values():
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for scope, names in _scopes(tree):
            for node in _walk(scope):
                hits = [_root_attribute(t) for t in _assigned(node)]
                obj = _setattr_call(node)
                if obj is not None:
                    hits.append((obj, "<setattr>"))
                for hit in hits:
                    if hit is not None and hit[0] in names and OWNERS[names[hit[0]]] != rel:
                        line = getattr(node, "lineno", 0)
                        found.append(f"{rel}:{line}: {hit[0]}.{hit[1]} ({names[hit[0]]})")
    return sorted(set(found))


# ---------------------------------------------------------------------- the checks
def test_the_package_has_no_import_circles() -> None:
    new, known = _split_known(cycles(import_graph(ROOT)))
    for c in known:  # shown in the warnings summary of every run until it is gone
        warnings.warn(f"allow-listed import circle (KNOWN_CYCLES): {' -> '.join(c)}", stacklevel=1)
    assert not new, "import circles:\n" + "\n".join(" -> ".join(c) for c in new)


def test_no_module_assigns_the_callbacks_state_but_its_owner() -> None:
    found = foreign_assignments(ROOT)
    assert not found, "assignments of another module's state:\n" + "\n".join(found)


def test_known_cycles_name_modules_that_exist_or_are_gone() -> None:
    """An allow-list entry names modules of the package (a typo would tolerate nothing)."""
    names = set(modules(ROOT))
    for cycle in KNOWN_CYCLES:
        assert len(cycle) >= 2 and all(m.startswith(PACKAGE + ".") for m in cycle)
    live = [c for c in KNOWN_CYCLES if c <= names]
    print(f"{len(live)} of {len(KNOWN_CYCLES)} allow-listed circles' modules still exist")


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_the_circle_check_finds_type_only_relative_and_submodule_circles(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "def f():\n    from . import a\n",
        "pkg/sub/__init__.py": "from ..d import x\n",
        "pkg/d.py": "import pkg.sub\nx = 1\n",
        "pkg/e.py": "from pkg.a import y\nimport os\n",
    })  # fmt: skip
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.e"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.d"} and graph["pkg.d"] == {"pkg.sub"}
    assert sorted(cycles(graph)) == [
        ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ["pkg.d", "pkg.sub", "pkg.d"],
    ]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_ownership_check_finds_every_form_of_assignment(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/helper.py": '''
            from __future__ import annotations

            def f(cb, other):
                cb.x = 1
                other.y = 2  # not tracked
                return [z for z in ()]

            def g(obj: InterpretationGeneralization, run: MonitorRun | None) -> None:
                obj.a, (obj.b, k) = 1, (2, 3)
                obj.c += 1
                run.d[0] = 1
                del run.e
                setattr(obj, "f", 1)
                object.__setattr__(run, "g", 1)
                def inner():
                    obj.h = 1
                run.ok()  # a method call is the owner's own business

            callback.module_level = 1
            ''',
        "lightning_saliency/callbacks/_run.py": "def own(run: MonitorRun):\n    run.x = 1\n",
    })  # fmt: skip
    found = [f.split(": ", 1)[1] for f in foreign_assignments(root, "pkg")]
    assert sorted(found) == sorted([
        "cb.x (InterpretationGeneralization)", "obj.a (InterpretationGeneralization)",
        "obj.b (InterpretationGeneralization)", "obj.c (InterpretationGeneralization)",
        "run.d (MonitorRun)", "run.e (MonitorRun)", "obj.<setattr> (InterpretationGeneralization)",
        "run.<setattr> (MonitorRun)", "obj.h (InterpretationGeneralization)",
        "callback.module_level (InterpretationGeneralization)",
    ])  # fmt: skip
    # the owner's own module may assign its attributes
    assert foreign_assignments(root, "lightning_saliency") == []


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_each_owner_module_exists_and_defines_its_class(name: str) -> None:
    tree = ast.parse((ROOT / OWNERS[name]).read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)
