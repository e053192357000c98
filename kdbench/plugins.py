"""Plugins: a user's own methods, models or datasets, registered exactly like the built-ins.

A plugin is a Python file (`--plugin my_method.py`), an importable module (`custom_imports` in a
sweep file, mmengine's key), or a distribution's `kdbench.plugins` entry point. Loading one imports
it, and its `@register_method` / `@register_model` decorators fill the registries. Every process
that trains loads the same plugins (the worker pool's, Ray's and SLURM's workers included): their
names travel with the sweep's worker settings. A plugin is code the user chose to run; nothing
else kdbench loads from disk runs code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from kdbench.errors import ConfigError

ENTRY_POINT_GROUP = "kdbench.plugins"
_loaded: set[str] = set()


def resolve(imports: list[str], base: Path) -> list[str]:
    """Plugin names with `.py` paths made absolute (relative paths are relative to `base`)."""
    return [str((base / item).resolve()) if item.endswith(".py") else item for item in imports]


def _load_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"plugin {path} not found")
    # one module name per file, stable across processes, so a worker's import matches the parent's
    name = f"kdbench_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise


def load(imports: list[str] | tuple[str, ...] = ()) -> None:
    """Import the entry-point plugins and `imports` (files or modules), each once per process."""
    import kdbench.methods  # noqa: F401  the built-ins first: a plugin may build on them
    import kdbench.models  # noqa: F401

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if f"entry:{entry.value}" not in _loaded:
            entry.load()
            _loaded.add(f"entry:{entry.value}")
    for item in imports:
        if item in _loaded:
            continue
        if item.endswith(".py"):
            _load_file(Path(item).resolve())
        else:
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as err:
                if err.name != item.split(".")[0] and err.name != item:
                    raise  # the plugin itself imports something missing: a bug in it, keep the traceback
                raise ConfigError(f"plugin module '{item}' is not importable (not on sys.path)") from err
        _loaded.add(item)
