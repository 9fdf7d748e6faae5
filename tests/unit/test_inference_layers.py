"""inference/ stays in layers (ARCHITECTURE.md, issue 24 item 1): no import circle between its files, no
file over ~350 lines, no function over 8 parameters (dataclass constructors are generated, not counted)."""

import ast
from pathlib import Path

import lvisctl.inference

ROOT = Path(lvisctl.inference.__file__).parent
MAX_LINES = 350
MAX_PARAMS = 8


def _files():
    return sorted(ROOT.glob("*.py"))


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lvisctl.inference."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.ImportFrom) and node.module == "lvisctl.inference":
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_circle_between_inference_files():
    graph = {p.stem: _imports(p) for p in sorted(ROOT.glob("*.py"))}
    state: dict[str, str] = {}

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != "open", "import circle: " + " -> ".join([*path, dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_inference_files_are_small_and_functions_take_few_parameters():
    for path in _files():
        assert len(path.read_text().splitlines()) <= MAX_LINES, path.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                names = names[1:] if names[:1] in (["self"], ["cls"]) else names
                assert len(names) <= MAX_PARAMS, f"{path.name}:{node.lineno} {node.name} takes {len(names)}"
