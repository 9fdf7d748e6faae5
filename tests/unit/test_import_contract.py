"""The import contract of ARCHITECTURE.md ("Layers"), checked on the source: no import circle between two
files of lvisctl/, and no import from a lower layer into a higher one.

Every import counts, also those inside functions and under ``TYPE_CHECKING`` (a lazy import is still a
dependency a reader has to follow). ``from lvisctl.pkg import name`` is an edge to ``lvisctl.pkg`` (its
``__init__``) and to ``lvisctl.pkg.name`` when that is a module. A module's imports of its own package's
``__init__`` do not count (the package re-exports its modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lvisctl

ROOT = Path(lvisctl.__file__).parent

# top to bottom: a module may import its own layer's packages and every layer below it, never one above
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),
    ("pipeline",),
    ("training",),
    ("analysis", "visualization", "checkpoint_import", "integrations"),
    ("inference",),
    ("engine", "evaluation"),
    ("modeling", "losses"),
    ("data",),
    ("rundir", "config"),
    ("registry", "errors", ""),  # "" = lvisctl/__init__.py
)


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


def import_edges(files: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (each is an import circle), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for depth, names in enumerate(LAYERS):
        if top in names:
            return depth
    raise AssertionError(f"{module}: package {top!r} is in no layer of LAYERS (add it to ARCHITECTURE.md)")


def test_tarjan_finds_a_circle_and_nothing_else() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_files() -> None:
    circles = strongly_connected(import_edges(module_files()))
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_no_import_from_a_lower_layer_into_a_higher_one() -> None:
    edges = import_edges(module_files())
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(edges.items())
        for target in sorted(targets)
        if layer_of(target) < layer_of(module)
    ]
    assert upward == [], "imports into a higher layer: " + "; ".join(upward)


def test_every_package_is_in_a_layer() -> None:
    for module in module_files():
        layer_of(module)
