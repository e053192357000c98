"""Plugins: a user's own methods, models or datasets, registered exactly like the built-ins.

A plugin is a Python file (`--plugin my_method.py`), an importable module (`custom_imports` in a
sweep file, mmengine's key), or a distribution's `kdbench.execution.plugins` entry point. Loading one imports
it, and its `@register_method` / `@register_model` / `@register_wrapper` decorators fill the registries. Every process
that trains loads the same plugins (the worker pool's, Ray's and SLURM's workers included): their
names travel with the sweep's worker settings. A plugin is code the user chose to run; nothing
else kdbench loads from disk runs code.

A plugin is the user's input, like a sweep file: a syntax error, an exception while it is imported,
or a name it registers that is malformed or taken (kdbench/core/registries.py) is one line naming the
plugin file (and its line), not kdbench's import machinery's traceback.

A plugin's code is part of the experiment: each plugin is known by its key (a file's name, e.g.
`my_method.py`, or a module's name) and the SHA-256 of its source (a file's bytes; a module's file,
or every .py file of a package), and `sha256_for` gives, for the names a run uses, the
`RunSpec.plugin_sha256` that goes into its run id: an edited plugin trains anew. A sweep keeps each
single-file plugin's source in its store (`STORE/plugins/<sha256>.py`, `save_sources`), from which
`kdbench rerun` loads it again (`load_recorded`). A file is executed from the bytes that were hashed.
Within one process, loading an edited version of a plugin (same key) replaces the names the old one
registered; the same code under another file name is loaded once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from kdbench.core.errors import ConfigError, file_problem
from kdbench.core.registries import (
    DATASETS,
    METHODS,
    MODELS,
    WRAPPERS,
    RegistrationError,
    canonical_model_name,
)
from kdbench.core.spec import require_sha256

ENTRY_POINT_GROUP = "kdbench.execution.plugins"
REGISTRIES = {"method": METHODS, "model": MODELS, "dataset": DATASETS, "student wrapper": WRAPPERS}


class PluginError(ConfigError):
    """A plugin that cannot be loaded: missing, unreadable, broken at import, or registering a bad name."""


@dataclass
class Plugin:
    key: str  # a file's name or a module's name: its key in RunSpec.plugin_sha256
    where: str  # how messages name it: the file's path, or the module
    sha256: str
    source: bytes | None  # a single file's bytes, kept for the store's copy (None: a package)
    names: set[tuple[str, str]] = field(default_factory=set)  # (registry kind, name) it registered


_plugins: dict[str, Plugin] = {}  # key -> the version loaded in this process
_owners: dict[tuple[str, str], str] = {}  # (registry kind, name) -> key of the plugin that registered it
_module_plugin: dict[str, str] = {}  # Python module name -> where (a clash names the other plugin's file)
_entry_points: set[str] = set()


def _is_path(item: str) -> bool:
    """A plugin named by a path (a module's name holds no slash)."""
    return item.endswith(".py") or "/" in item or os.sep in item


def resolve(imports: list[str], base: Path) -> list[str]:
    """Plugin names with paths made absolute (relative paths are relative to `base`)."""
    return [str((base / item).resolve()) if _is_path(item) else item for item in imports]


def source_path(out: Path, sha256: str) -> Path:
    """Where a store keeps the source of the plugin with this SHA-256."""
    require_sha256(sha256, "a plugin's SHA-256")  # it becomes a file name: '../x' never passes
    return Path(out) / "plugins" / f"{sha256}.py"


def _registered() -> dict[tuple[str, str], object]:
    return {
        (kind, name): obj
        for kind, registry in REGISTRIES.items()
        for name, obj in registry.module_dict.items()
    }


def _unload(plugin: Plugin) -> None:
    """Forget what an earlier version of a plugin registered (its edited version is being loaded)."""
    from kdbench.methods.base import method_class

    for kind, name in plugin.names:
        REGISTRIES[kind].unregister(name)
        _owners.pop((kind, name), None)
    method_class.cache_clear()  # it caches classes by name
    del _plugins[plugin.key]


def _loaded(sha256: str) -> bool:
    return any(plugin.sha256 == sha256 for plugin in _plugins.values())


def _line_in(err: BaseException, filename: str) -> str:
    """' (line N)': the last line of `filename` the exception passed through, when it did."""
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if frame.filename == filename]
    return f" (line {lines[-1]})" if lines else ""


def _first_line(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _import(plugin: Plugin, body: Callable[[], None], filename: str | None) -> None:
    """Run `body` (the plugin's import) and record what it registered; one line naming the plugin
    when it fails, with whatever it registered before failing forgotten."""
    before = _registered()
    try:
        body()
    except RegistrationError as err:
        message = str(err)
        if err.existing in _module_plugin:
            message = message.replace(f"(by {err.existing})", f"(by plugin {_module_plugin[err.existing]})")
        elif err.existing and err.existing.startswith("kdbench."):
            message = message.replace(f"(by {err.existing})", f"(a built-in, in {err.existing})")
        failure = f"plugin {plugin.where}: {message}"
    except SyntaxError as err:
        at = "" if err.filename == filename else f" in {err.filename}"
        failure = f"plugin {plugin.where}: syntax error{at} at line {err.lineno}: {err.msg}"
    except Exception as err:  # the plugin's own code failed: the user's to fix, named in one line
        where = _line_in(err, filename) if filename else ""
        command = f"python {filename}" if plugin.where == filename else f"python -c 'import {plugin.key}'"
        hint = f"; `{command}` shows the traceback"
        failure = (
            f"plugin {plugin.where} failed at import{where}: {type(err).__name__}: {_first_line(str(err))}"
            f"{hint}"
        )
    else:
        failure = None
    after = _registered()
    new = {entry for entry, obj in after.items() if before.get(entry) is not obj}
    if failure:
        for kind, name in new:
            REGISTRIES[kind].unregister(name)
        raise PluginError(failure)
    plugin.names = new
    for entry in new:
        _owners[entry] = plugin.key
    _plugins[plugin.key] = plugin


def _load_file(path: Path, key: str | None = None) -> None:
    """Import a plugin file, from the bytes that are hashed; `key` (default: its file name) is the name a
    spec knows it by (a store's copy is loaded under its original's name)."""
    if problem := file_problem(path, missing="not found"):
        raise PluginError(f"plugin {path} {problem}; give a Python file (.py)")
    try:
        source = path.read_bytes()
    except OSError as err:
        raise PluginError(f"plugin {path} is unreadable ({err.strerror})") from err
    sha256 = hashlib.sha256(source).hexdigest()
    key = key or path.name
    if _loaded(sha256):
        return  # this code is loaded already (a store's copy of a plugin loaded from its file)
    if key in _plugins:
        _unload(_plugins[key])  # an edited version of a plugin loaded before in this process
    # one module name per file, stable across processes, so a worker's import matches the parent's
    name = f"kdbench_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    _module_plugin[name] = str(path)

    def body() -> None:
        sys.modules[name] = module
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102  a plugin is trusted code
        except BaseException:
            del sys.modules[name]
            raise

    _import(Plugin(key, str(path), sha256, source), body, str(path))


def module_source(module: types.ModuleType) -> tuple[str, bytes | None]:
    """(SHA-256, bytes) of a module's source: its file, or every .py file of a package (bytes None)."""
    folders = [Path(folder) for folder in getattr(module, "__path__", [])]
    if not folders:
        source = Path(module.__file__).read_bytes() if getattr(module, "__file__", None) else b""
        return hashlib.sha256(source).hexdigest(), source
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest(), None


def _load_module(name: str, where: str, importer: Callable[[], object] | None = None) -> None:
    """Import a plugin module (or an entry point, `importer`), known by the module's name."""
    if name in _plugins:
        return
    filename = None
    if importer is None:
        try:
            found = importlib.util.find_spec(name)
        except Exception:  # a parent package that fails to import: the import below names it
            found = importlib.machinery.ModuleSpec(name, None)
        if found is None:
            raise PluginError(f"plugin module '{name}' is not importable (not on sys.path)")
        filename = found.origin
    plugin = Plugin(name, where, "", None)
    _import(plugin, importer or (lambda: importlib.import_module(name)), filename)
    plugin.sha256, plugin.source = module_source(sys.modules[name])
    _module_plugin[name] = where


def load(imports: list[str] | tuple[str, ...] = ()) -> None:
    """Import the entry-point plugins and `imports` (files or modules), each once per process (a file
    again when it was edited since)."""
    import kdbench.methods  # noqa: F401  the built-ins first: a plugin may build on them
    import kdbench.models  # noqa: F401

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value not in _entry_points:
            _load_module(entry.module, f"entry point '{entry.name} = {entry.value}'", entry.load)
            _entry_points.add(entry.value)
    files: dict[str, Path] = {}
    for item in imports:
        if not _is_path(item) and Path(item).is_file():  # a file, not a module: its name lacks .py
            raise PluginError(f"plugin {item} is a file but not a Python file; name it .py")
        if not _is_path(item):
            _load_module(item, f"module '{item}'")
            continue
        path = Path(item).resolve()
        if files.setdefault(path.name, path) != path:
            raise PluginError(
                f"plugins {files[path.name]} and {path} share a file name, which is how a run knows a "
                "plugin; rename one"
            )
        _load_file(path)


def sha256_for(
    method: str | None = None,
    models: Iterable[str | None] = (),
    dataset: str | None = None,
    wrappers: Iterable[str] = (),
) -> dict:
    """{plugin key: SHA-256} of the plugins that registered the method (NAME+kd: NAME), the models, the
    dataset and the student wrappers a run uses: its `RunSpec.plugin_sha256` (empty when all are built-ins)."""
    used = [("method", method.partition("+")[0])] if method else []
    used += [("model", canonical_model_name(m)) for m in models if m and not m.startswith("timm:")]
    used += [("dataset", dataset)] if dataset else []
    used += [("student wrapper", name) for name in wrappers]
    keys = {_owners[entry] for entry in used if entry in _owners}
    return {key: _plugins[key].sha256 for key in sorted(keys)}


def owner(kind: str, name: str) -> str | None:
    """The key of the plugin that registered `name` in the `kind` registry; None for a built-in."""
    return _owners.get((kind, name))


def save_sources(out: Path, plugin_sha256: dict) -> None:
    """Keep the source of each single-file plugin of a spec's `plugin_sha256` in the store
    (`source_path`), once."""
    from kdbench.core.store import atomic_write_bytes

    for sha256 in plugin_sha256.values():
        plugin = next(plugin for plugin in _plugins.values() if plugin.sha256 == sha256)
        path = source_path(out, sha256)
        if plugin.source is not None and not path.is_file():
            atomic_write_bytes(path, plugin.source)


def load_recorded(recorded: dict, store_root: Path, given: Iterable[str] = ()) -> None:
    """Load the plugins a record's spec names ({key: SHA-256}) in those very versions: a `given` file
    with that SHA-256, else the store's copy (checked against it), else the module of that name when
    it still has that source; one line naming what is missing or different."""
    given_files = {}
    for item in given:
        path = Path(item).resolve()
        if problem := file_problem(path, missing="not found"):
            raise PluginError(f"--plugin {path} {problem}")
        given_files[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    wanted = ", ".join(f"{key} ({sha256[:12]})" for key, sha256 in sorted(recorded.items())) or "none"
    for sha256, path in given_files.items():
        if sha256 not in recorded.values():
            raise PluginError(
                f"--plugin {path} has SHA-256 {sha256[:12]}, which is not a plugin of this record (it "
                f"used: {wanted})"
            )
    for key, sha256 in sorted(recorded.items()):
        copy = source_path(store_root, sha256)  # checks that the record holds a SHA-256
        if _loaded(sha256):
            continue
        if sha256 in given_files:
            _load_file(given_files[sha256], key)
        elif copy.is_file():
            if hashlib.sha256(copy.read_bytes()).hexdigest() != sha256:
                raise PluginError(f"plugin copy {copy} does not match its SHA-256 (changed on disk)")
            _load_file(copy, key)
        elif not key.endswith(".py"):
            _load_module(key, f"module '{key}'")
        if not _loaded(sha256):
            raise PluginError(
                f"the record's plugin {key} (SHA-256 {sha256[:12]}) is neither in {copy.parent} nor given; "
                f"pass that version of it with --plugin FILE"
            )
