"""The package's architecture, checked: layers import only downwards, no import circle, small
modules and functions (the house style's ~500 lines per module, ~80 per function)."""

from __future__ import annotations

import ast
from pathlib import Path

import corrdiff_xr

PACKAGE = Path(corrdiff_xr.__file__).resolve().parent
#: each top-level unit of the package and its layer; a module may import its own layer or
#: lower ones, never a higher one (stages: data -> codec -> networks -> model ->
#: training / inference -> presentation -> commands)
LAYERS = {
    **dict.fromkeys(
        [
            "_version",
            "errors",
            "dims",
            "_atomic",
            "_lock",
            "_redact",
            "_identity",
            "protocols",
            "_constraints",
            "config",
            "config_sampling",
            "_outputs",
            "_yaml_overrides",
            "_cf",
            "transforms",
            "timekeys",
            "features",
        ],
        0,
    ),
    "data": 1,
    **dict.fromkeys(["codec", "noise", "scoring"], 2),
    "units": 3,
    **dict.fromkeys(["nn", "edm", "sampling", "patching"], 4),
    "model": 5,
    **dict.fromkeys(["training", "inference"], 6),
    **dict.fromkeys(["plot", "demo", "accessors"], 7),
    "testing": 8,
    "cli": 9,
    "__init__": 10,
}
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 90


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """corrdiff_xr modules ``name`` imports, at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{a} -> {b}"
        for a, deps in _graph().items()
        for b in deps
        if LAYERS[_unit(b)] > LAYERS[_unit(a)]
    ]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


#: units that hold methods in plain torch/numpy and must not reach into the data layer (what
#: they share with it, like time keys, lives below both)
DATA_FREE = ("noise", "edm", "sampling", "nn")


def test_method_layers_import_nothing_from_data():
    reached = [
        f"{a} -> {b}"
        for a, deps in _graph().items()
        if _unit(a) in DATA_FREE
        for b in deps
        if _unit(b) == "data"
    ]
    assert not reached, "method modules importing data/:\n" + "\n".join(sorted(reached))


def test_there_is_no_import_circle():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def _docstring_lines(node: ast.AST) -> int:
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.end_lineno - first.lineno + 1
    return 0


def test_modules_and_functions_stay_small():
    """Functions are counted without their docstrings (numpydoc parameter lists are long)."""
    big_modules = [
        f"{p.relative_to(PACKAGE)}: {n} lines"
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    long_functions = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n}"
                    )
    assert not big_modules and not long_functions, "\n".join(big_modules + long_functions)
