"""The package's structure (docs/DESIGN.md, "Layers"): each module imports only from its own layer
or the ones below, the import graph has no cycle, and the engine names no method and no wrapper."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: each layer is a folder of kdbench/ (docs/DESIGN.md, "Layers"). A module may import
# from its own layer and the layers below it.
LAYERS = [
    ["kdbench", "kdbench.core"],
    ["kdbench.models", "kdbench.methods", "kdbench.wrappers", "kdbench.data"],
    ["kdbench.training"],
    ["kdbench.execution"],
    ["kdbench.explain", "kdbench.devtools", "kdbench.reporting"],
    ["kdbench.cli", "kdbench.api", "kdbench.__main__"],
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (methods/ ships as kdbench.methods)."""
    found = {}
    for folder, package in ((ROOT / "kdbench", "kdbench"), (ROOT / "methods", "kdbench.methods")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The kdbench modules `name` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text())
    if name == "kdbench":  # the top package's PEP 562 __getattr__ re-exports the API (kdbench/api.py)
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in modules and t != name}


def _layer(module: str) -> int:
    best = None
    for index, members in enumerate(LAYERS):
        for member in members:
            is_package = member != "kdbench"  # the top package's layer is not its submodules'
            if (module == member or (is_package and module.startswith(member + "."))) and (
                best is None or len(member) > len(best[1])
            ):
                best = (index, member)
    assert best is not None, f"{module} has no layer: add it to LAYERS (and to docs/DESIGN.md)"
    return best[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_imports_only_from_its_layer_or_below():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # a package importing its own submodules is how it registers them, not a cycle
    edges = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def _code_words(path: Path) -> set[str]:
    """Identifiers, attribute names and non-docstring strings of a module (comments and docs excluded)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return {word.lower() for word in words}


def test_the_engine_names_no_method_and_no_wrapper():
    """Every module of the loop (kdbench/training/: the loop, its members, measurement, export,
    results, cohort planning, teachers) handles methods and wrappers through their interfaces only."""
    import kdbench.methods  # noqa: F401
    from kdbench.core.registries import METHODS, WRAPPERS

    # "student" is both the baseline method's name and the engine's model: only the others count
    names = {name.lower() for name in [*METHODS.module_dict, *WRAPPERS.module_dict]} - {"student"}
    modules = sorted((ROOT / "kdbench" / "training").glob("*.py"))
    assert {"engine.py", "member.py"} <= {path.name for path in modules}
    for path in modules:
        words = _code_words(path)
        named = sorted(name for name in names for word in words if name in word.split(".") or name == word)
        assert not named, f"kdbench/training/{path.name} names {named}"
        assert not any("vam" in word for word in words), f"kdbench/training/{path.name} names VAM"


def test_the_top_level_holds_only_the_entry_points():
    """Folders are the layers: every module lives in one, but the package, its API and `python -m`."""
    top = sorted(path.name for path in (ROOT / "kdbench").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py"], top


MAX_MODULE_LINES = 450


def test_no_module_is_over_450_lines():
    """A file that does seven things is seven files (ruff's complexity rules keep functions small)."""
    long = {
        str(path.relative_to(ROOT)): lines
        for path in [*(ROOT / "kdbench").rglob("*.py"), *(ROOT / "methods").rglob("*.py")]
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_tests_mirror_the_tree():
    """tests/<folder>/ tests kdbench/<folder>/ (methods/ too), and no two test files share a name
    (the folders have no __init__.py: pytest imports a test module by its name)."""
    folders = {
        path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and path.name != "__pycache__"
    }
    layers = {
        path.name for path in (ROOT / "kdbench").iterdir() if path.is_dir() and path.name != "__pycache__"
    }
    assert folders <= layers | {"methods"}, sorted(folders - layers - {"methods"})
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})


def test_the_files_the_suite_schedules_first_exist():
    """tests/conftest.py's FILES_THAT_TRAIN_LONGEST name test files (a renamed one would just lose its place)."""
    from conftest import FILES_THAT_TRAIN_LONGEST

    assert [path for path in FILES_THAT_TRAIN_LONGEST if not (ROOT / path).is_file()] == []
