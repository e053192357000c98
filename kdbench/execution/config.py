"""Sweep configurations: a preset, a sweep file and command-line flags, merged into one request.

A sweep file holds the keys of a preset (registry/presets/*.yaml are such files); every key is
optional and fills in over the preset it names (`preset:`, default quick), and over the files its
`_base_` names; flags fill in over the file. Lists in `hp` and `vam_config` are grids: each method
trains the Cartesian product of its own keys' values, e.g.

    hp: {kd.temperature: [2, 4], kd.kd_weight: [0.9, 0.5]}   # four kd configurations

YAML and JSON sweep files are untrusted data, read as such (`catalog.read_yaml`: no tags, no
aliases); a Python sweep file is code the user chose and runs, like a plugin. kdbench reads sweep
files itself rather than through mmengine's `Config`, whose YAML loader builds Python objects from
tags and which substitutes environment variables and imports packages named in `_base_`.

The merged configuration (`resolve`) is plain data; `build_request` turns it into a SweepRequest
and `resolved_record` is what a sweep writes into its store (`sweeps/<sha>.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
import runpy
import types
from dataclasses import fields, replace
from pathlib import Path

from kdbench.core import catalog
from kdbench.core.errors import ConfigError, clip, file_problem, shorten
from kdbench.core.spec import Recipe, grid_points
from kdbench.core.store import unique_json_keys
from kdbench.execution import plugins, settings
from kdbench.execution.setting_values import names
from kdbench.wrappers import wrapper_configs
from kdbench.wrappers.vam import VAMConfig

# every key a sweep file (or a preset) may hold, and what it holds (kdbench/execution/settings.py)
KEYS = {key: setting.help for key, setting in settings.sweep_settings().items()}
VAM_MODES = {"on": [True], "off": [False], "both": [False, True]}
# keys whose value is a mapping (merged field by field)
MAPPING_KEYS = tuple(key for key, setting in settings.sweep_settings().items() if setting.mapping)


def _checked_keys(config: dict, source: str, valid: set[str] | None = None) -> dict:
    """`config` with every key one of `valid` (default: the sweep keys), no mapping key holding
    anything else and no key empty."""
    valid = set(KEYS) if valid is None else valid
    unknown = sorted(clip(str(key)) for key in set(config) - valid)
    if unknown:
        shown = ", ".join(unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ConfigError(f"{source}: unknown key(s) {shown}{more}; valid: {', '.join(sorted(valid))}")
    for key, value in config.items():
        named = f"--{key.replace('_', '-')}" if source == "flags" else f"{source}: {key}"
        what = KEYS[key] if key in KEYS else settings.SETTINGS[key].help
        if key in MAPPING_KEYS and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{named} takes a mapping ({what}), got {shorten(value)}")
        if key != "description" and _is_empty(key, value):
            raise ConfigError(f"{named} is empty; give it a value ({what}) or leave it out")
    return config


def _is_empty(key: str, value) -> bool:
    """An empty string or a comma list of nothing (`--methods ,`); no methods or pairs at all."""
    if isinstance(value, str):
        return not value.replace(",", "").strip()
    return key in ("methods", "pairs") and value == []


SWEEP_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".py": "Python"}


def load_sweep_file(path: str | Path) -> dict:
    """A sweep file as a plain dict: its `_base_` files merged under it (as `merge` merges layers),
    its keys checked and its plugin paths made absolute. YAML and JSON are read as data
    (`catalog.read_yaml`, `json`); a Python file runs (`_run_python_sweep`)."""
    return _load_sweep_chain(Path(path), ())


def _load_sweep_chain(path: Path, chain: tuple[Path, ...]) -> dict:
    """`path` over its `_base_` files; `chain` holds the files that named it (a cycle is refused)."""
    data = _read_sweep_file(path, chain)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(
            f"sweep file {path}: _base_ takes a file or a list of files (relative to it), got {shorten(bases)}"
        )
    layers = []
    for base in bases:
        base_path = path.parent / base
        if path.suffix != ".py" and base_path.suffix == ".py":
            raise ConfigError(
                f"sweep file {path}: _base_ {shorten(base)} is a Python file, which runs as code; only a "
                "Python sweep file may name one (YAML and JSON are read as data)"
            )
        if base_path.resolve() in {*chain, path.resolve()}:
            raise ConfigError(f"sweep file {path}: _base_ {shorten(base)} names a file of its own chain")
        layers.append(_load_sweep_chain(base_path, (*chain, path.resolve())))
    config = _checked_keys(data, f"sweep file {path}")
    if "custom_imports" in config:
        config["custom_imports"] = {"imports": plugins.resolve(_imports_of(config, path), path.parent)}
    return merge(*layers, config) if layers else config


def _read_sweep_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """One sweep file's own mapping (its `_base_` still in it)."""
    named = f"sweep file {path}" if not chain else f"sweep file {path} (a _base_ of {chain[-1]})"
    problem = file_problem(path, missing="not found")
    if problem:
        raise ConfigError(f"{named} {problem}; pass --config a YAML, JSON or Python sweep file")
    if path.suffix not in SWEEP_FORMATS:
        raise ConfigError(f"{named} is not YAML, JSON or Python: name it .yaml, .yml, .json or .py")
    if path.suffix == ".py":
        return _mapping_of(_run_python_sweep(path, named), named)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror
        raise ConfigError(f"{named} is unreadable ({reason})") from err
    if path.suffix != ".json":
        return _mapping_of(catalog.read_yaml(text, named), named)
    try:
        data = json.loads(text, object_pairs_hook=unique_json_keys)
    except (ValueError, RecursionError) as err:  # RecursionError: nested beyond Python's stack
        if isinstance(err, json.JSONDecodeError):
            reason = f"line {err.lineno}: {err.msg}"
        else:  # a repeated key (store.unique_json_keys) or nesting beyond the stack
            reason = str(err) if isinstance(err, ValueError) else "nested too deeply"
        raise ConfigError(f"{named} is unreadable (not JSON: {reason})") from err
    return _mapping_of(data, named)


def _run_python_sweep(path: Path, named: str) -> dict:
    """A Python sweep file, run as the code it is (the user chose it, like a plugin): its top-level
    names, less the private ones (`_base_` kept), modules, functions and classes, are its keys. An
    exception it raises is the user's error: one line with its type and message."""
    try:
        namespace = runpy.run_path(str(path), run_name="__kdbench_sweep__")
    except Exception as err:  # whatever the user's code raises, named as it raised it
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"{named} failed: {type(err).__name__}: {clip(reason, 200)}") from err
    return {
        key: value
        for key, value in namespace.items()
        if (key == "_base_" or not key.startswith("_"))
        and not isinstance(value, (types.ModuleType, types.FunctionType, type))
    }


def _mapping_of(data: object, named: str) -> dict:
    if isinstance(data, dict):
        return data
    kinds = {type(None): "nothing", list: "a list", str: "a string", bool: "true or false"}
    kind = kinds.get(type(data), "a number" if isinstance(data, (int, float)) else f"a {type(data).__name__}")
    raise ConfigError(f"{named} must hold a mapping of keys (key: value lines), got {kind}")


def _imports_of(config: dict, source: Path | str) -> list[str]:
    custom = config["custom_imports"]
    imports = custom.get("imports") if isinstance(custom, dict) else None
    if isinstance(imports, str):
        imports = [imports]
    if not isinstance(imports, list) or not all(isinstance(item, str) for item in imports):
        raise ConfigError(
            f"{source}: custom_imports takes {{imports: [module or file.py, ...]}}, got {shorten(custom)}"
        )
    return imports


def _merge_recipe(base: dict, layer: dict) -> dict:
    """`layer` over `base`; a new epoch count without decay points rescales the base's decay points."""
    merged = {**base, **layer}
    if "epochs" in layer and "lr_decay_epochs" not in layer and "epochs" in base:
        rescaled = Recipe.from_dict(base).with_epochs(layer["epochs"])
        merged["lr_decay_epochs"] = list(rescaled.lr_decay_epochs)
    return merged


def _merge_nested(base: dict, layer: dict) -> dict:
    merged = {key: dict(value) for key, value in base.items()}
    for key, value in layer.items():
        merged.setdefault(key, {}).update(value)
    return merged


def merge(*layers: dict) -> dict:
    """Later layers win key by key; recipes, hp, vam_config, slurm and student_lr merge field by field."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key in ("recipe", "teacher_recipe"):
                merged[key] = _merge_recipe(merged.get(key, {}), value)
            elif key == "hp":
                merged[key] = _merge_nested(merged.get(key, {}), hp_grid(value))
            elif key in ("vam_config", "slurm", "student_lr"):
                merged[key] = {**merged.get(key, {}), **value}
            elif key == "custom_imports":
                imports = merged.get(key, {}).get("imports", []) + value["imports"]
                merged[key] = {"imports": list(dict.fromkeys(imports))}
            else:
                merged[key] = value
    return merged


def resolve(
    sweep_file: str | Path | dict | None = None,
    flags: dict | None = None,
    preset: str | None = None,
    command: str = "run",
) -> dict:
    """The configuration of `command` (run, teacher, explain, bench): the schema's defaults < the preset
    (the keys the command takes from one, settings.PRESET_KEYS) < sweep file (a path, or its dict) <
    flags. The preset is `preset`, else the file's `preset:`, else quick; `jobs` defaults to what the
    device and thread count allow."""
    from kdbench.core.environment import default_jobs

    if isinstance(sweep_file, dict):
        file_layer = _checked_keys(dict(sweep_file), "sweep configuration")
        if "custom_imports" in file_layer:
            file_layer["custom_imports"] = {
                "imports": plugins.resolve(_imports_of(file_layer, "sweep"), Path.cwd())
            }
    else:
        file_layer = load_sweep_file(sweep_file) if sweep_file else {}
    flag_layer = _checked_keys(dict(flags or {}), "flags", settings.keys_of(command))
    wanted = settings.PRESET_KEYS[command]
    preset_layer = {}
    if wanted != ():
        name = preset or file_layer.get("preset") or "quick"
        chosen = catalog.preset(name).items()
        preset_layer = {key: value for key, value in chosen if key in KEYS and key in (wanted or KEYS)}
        preset_layer["preset"] = name
    resolved = merge(settings.defaults(command), preset_layer, file_layer, flag_layer)
    if command in settings.SETTINGS["jobs"].commands:
        resolved.setdefault("jobs", default_jobs(resolved["device"], resolved["threads"]))
    return resolved


def hp_grid(hp: dict) -> dict[str, dict[str, list]]:
    """{method.key: v} or {method: {key: v}} as {method: {key: [values]}} (a scalar is a one-value grid)."""
    if not isinstance(hp, dict):
        raise ConfigError(f"hp takes {{method.key: value}} or {{method: {{key: value}}}}, got {shorten(hp)}")
    grid: dict[str, dict[str, list]] = {}
    for key, value in hp.items():
        method, dot, name = str(key).partition(".")
        items = {name: value} if dot else value
        if not method or (dot and not name) or not isinstance(items, dict):
            raise ConfigError(
                f"bad hp key {shorten(key)}: write METHOD.KEY (e.g. kd.temperature) or METHOD: {{KEY: ...}}"
            )
        for hp_name, values in items.items():
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise ConfigError(f"hp {clip(f'{method}.{hp_name}')} has an empty list of values")
            grid.setdefault(method, {})[hp_name] = values
    return grid


def vam_configs(settings: dict, max_runs: int | None = None) -> list[VAMConfig]:
    """Every VAM configuration of a `vam_config` grid (lists are grids); a grid of more than `max_runs`
    points is refused before one configuration is built (the sweep's own count comes later)."""
    valid = {f.name for f in fields(VAMConfig)}
    unknown = sorted(clip(str(key)) for key in set(settings) - valid)
    if unknown:
        raise ConfigError(
            f"vam_config: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    grid = {key: list(v) if isinstance(v, (list, tuple)) else [v] for key, v in settings.items()}
    points = math.prod(len(values) for values in grid.values())
    if max_runs is not None and points > max_runs:
        raise ConfigError(
            f"vam_config is a grid of {points:,} configurations, over the limit of {max_runs:,} runs; "
            f"shrink it, or allow it with --max-runs {points} (max_runs in a sweep file)"
        )
    return [VAMConfig(**point) for point in grid_points(grid)]


def _seeds(value) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ConfigError(f"seeds takes a number of seeds or a list of seeds, got {shorten(value)}")
    seeds = list(range(value)) if isinstance(value, int) else value  # none at all: "nothing to train"
    if not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds):
        raise ConfigError(f"seeds must be whole numbers >= 0, got {shorten(value)}")
    return seeds


def _max_runs(config: dict) -> int | None:
    """The run limit a grid is held to while the request is built (a malformed one is refused later,
    by name, in `sweep.check_size`)."""
    limit = config.get("max_runs", settings.MAX_RUNS)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def build_request(config: dict):
    """The SweepRequest a resolved configuration describes (plugins loaded first)."""
    from kdbench.core.registries import METHODS
    from kdbench.execution.sweep import SweepRequest

    imports = config.get("custom_imports", {}).get("imports", [])
    plugins.load(imports)
    methods = names(config["methods"], "methods")
    if methods == "all":
        methods = sorted(name for name in METHODS.module_dict if "+" not in name)
    pairs = config["pairs"]
    pairs = catalog.parse_pairs(pairs if isinstance(pairs, str) else ",".join(names(pairs, "pairs")))
    vam = {True: "on", False: "off"}.get(config["vam"], config["vam"])  # YAML reads on/off as booleans
    if vam not in VAM_MODES:
        raise ConfigError(f"vam takes on, off or both, got {shorten(config['vam'])}")
    return SweepRequest(
        methods=methods,
        pairs=pairs,
        dataset=config["dataset"],
        recipe=Recipe.from_dict(config["recipe"]),
        teacher_recipe=Recipe.from_dict(config["teacher_recipe"]),
        seeds=_seeds(config["seeds"]),
        vam_modes=VAM_MODES[vam],
        vam_configs=vam_configs(config.get("vam_config", {}), _max_runs(config)),
        student_lr=config.get("student_lr", {}),
        hp_overrides=config.get("hp", {}),
        wrappers=wrapper_configs(config.get("wrappers", {})),
        teacher_path=config.get("teacher"),
        **settings.request_values(config, SweepRequest),
    )


def _with_data_choices(request, config: dict):
    """The request's recipes with the image size and the loader decided from the data
    (kdbench/data/__init__.py `resolve_recipe`), the loader `auto` where no flag, file or preset names one;
    the teacher's must match the students' (a process holds one decoded copy of a dataset)."""
    from kdbench.data import resolve_recipe

    recipes = {}
    for key in ("recipe", "teacher_recipe"):
        asked = replace(getattr(request, key), loader=config.get(key, {}).get("loader", "auto"))
        recipes[key] = resolve_recipe(
            request.dataset, request.data_root, asked, device=request.device, copies=request.jobs
        )
    student, teacher = recipes["recipe"], recipes["teacher_recipe"]
    if (student.image_size, student.loader) != (teacher.image_size, teacher.loader):
        raise ConfigError(
            f"recipe and teacher_recipe must share image_size and loader, got {student.image_size} "
            f"{student.loader} vs {teacher.image_size} {teacher.loader}; set both (or --image-size / --loader)"
        )
    return replace(request, **recipes)


def prepare(request, config: dict, argv: list[str] | None = None, write: bool = True):
    """What a sweep needs before it starts, for the command line and the API alike: the image size and
    loader decided from the data, the store checked and given the resolved configuration, and a
    `student_init` checkpoint checked and copied into the store (its SHA-256 into every spec)."""
    from kdbench.core import store

    request = _with_data_choices(request, config)
    if write:
        store.ensure_writable(request.out)
        write_resolved(config, request.out, argv)
    if config.get("student_init"):
        from kdbench.data import prepare_data
        from kdbench.execution.units import stage_student_init

        info = prepare_data(request.dataset, request.data_root, request.recipe).info
        students = [pair.student for pair in request.pairs]
        digest = stage_student_init(request.out, config["student_init"], students, info)
        request = replace(request, student_init_sha256=digest)
    return request


def resolved_record(config: dict, argv: list[str] | None = None) -> dict:
    """What a sweep writes into its store: the merged configuration and the command that gave it."""
    body = {key: value for key, value in config.items() if key != "out"}
    return {"config": body, "argv": argv or [], "sha256": hashlib.sha256(_canonical(body)).hexdigest()}


def write_resolved(config: dict, out: Path, argv: list[str] | None = None) -> Path:
    """`out/sweeps/<sha12>.json`: the same configuration always lands in the same file."""
    from kdbench.core.store import atomic_write_bytes

    record = resolved_record(config, argv)
    path = Path(out) / "sweeps" / f"{record['sha256'][:12]}.json"
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()
