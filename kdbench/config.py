"""Sweep configurations: a preset, a sweep file and command-line flags, merged into one request.

A sweep file is read by mmengine's `Config` (YAML, JSON or Python) and holds the keys of a preset
(registry/presets/*.yaml are such files); every key is optional and fills in over the preset it
names (`preset:`, default quick); flags fill in over the file. Lists in `hp` and `vam_config` are
grids: each method trains the Cartesian product of its own keys' values, e.g.

    hp: {kd.temperature: [2, 4], kd.kd_weight: [0.9, 0.5]}   # four kd configurations

The merged configuration (`resolve`) is plain data; `build_request` turns it into a SweepRequest
and `resolved_record` is what a sweep writes into its store (`sweeps/<sha>.json`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path

from kdbench import catalog, plugins
from kdbench.errors import ConfigError
from kdbench.spec import Recipe, VAMConfig, grid_points
from kdbench.trackers import check_trackers

# every key a sweep file (or a preset) may hold
KEYS = {
    "description": "one line saying what the sweep is for",
    "preset": "the preset whose values fill the keys this file leaves out (default quick)",
    "dataset": "dataset name (kdbench list datasets)",
    "data_root": "dataset folder",
    "pairs": "teacher:student list, or a pair group (kdbench list pairs)",
    "methods": "method names, or 'all'",
    "vam": "on, off or both",
    "vam_config": "VAM settings (groups, last_stages, entropy_weight, t0, t_min, lr_scale); lists are grids",
    "seeds": "a number of seeds (0..N-1) or a list of seeds",
    "recipe": "student recipe fields (kdbench.spec.Recipe); epochs alone rescales the lr decay points",
    "teacher_recipe": "recipe of teachers kdbench trains",
    "student_lr": "per-student learning rate, {student: lr}",
    "hp": "method hyper-parameters, {method.key: value} or {method: {key: value}}; lists are grids",
    "teacher": "teacher checkpoint path (default: train and cache)",
    "device": "torch device",
    "force": "re-run specs that already have a record",
    "cohort": "train runs sharing a seed and recipe in lockstep",
    "precision": "fp32, bf16 or fp16",
    "compile": "torch.compile the training forwards",
    "threads": "torch threads per run",
    "jobs": "runs trained at once",
    "backend": "local, ray, slurm or submitit-local",
    "ray_address": "Ray cluster to join",
    "slurm": "SLURM options: partition, gpus_per_task, time_min, array_parallelism",
    "custom_imports": "plugins to load first: {imports: [module or file.py, ...]} (mmengine's key)",
    "out": "results store folder",
    "log": "trackers of per-epoch scalars: tensorboard, mlflow, wandb, aim (a list)",
    "student_init": "checkpoint every student starts from (its SHA-256 goes into each spec)",
}
VAM_MODES = {"on": [True], "off": [False], "both": [False, True]}


def _checked_keys(config: dict, source: str) -> dict:
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(KEYS))}")
    return config


def load_sweep_file(path: str | Path) -> dict:
    """A sweep file as a plain dict, its keys checked and its plugin paths made absolute."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    try:
        config = Config.fromfile(str(path), import_custom_modules=False).to_dict()
    except Exception as err:  # mmengine raises several types for a file it cannot parse
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"sweep file {path} is unreadable ({reason})") from err
    config = _checked_keys(config, f"sweep file {path}")
    if "custom_imports" in config:
        config["custom_imports"] = {"imports": plugins.resolve(_imports_of(config, path), path.parent)}
    return config


def _imports_of(config: dict, source: Path | str) -> list[str]:
    custom = config["custom_imports"]
    imports = custom.get("imports") if isinstance(custom, dict) else None
    if isinstance(imports, str):
        imports = [imports]
    if not isinstance(imports, list) or not all(isinstance(item, str) for item in imports):
        raise ConfigError(
            f"{source}: custom_imports takes {{imports: [module or file.py, ...]}}, got {custom!r}"
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


# what a run uses where neither the flags, the sweep file nor the preset says
RUN_DEFAULTS = {"device": "cpu", "cohort": True, "threads": 1, "backend": "local", "out": "kdbench-results"}


def resolve(
    sweep_file: str | Path | dict | None = None, flags: dict | None = None, preset: str | None = None
) -> dict:
    """defaults < preset < sweep file (a path, or its dict) < flags. The preset is `preset`, else the
    file's `preset:`, else quick; `jobs` defaults to what the device and thread count allow."""
    from kdbench.environment import default_jobs

    if isinstance(sweep_file, dict):
        file_layer = _checked_keys(dict(sweep_file), "sweep configuration")
        if "custom_imports" in file_layer:
            file_layer["custom_imports"] = {
                "imports": plugins.resolve(_imports_of(file_layer, "sweep"), Path.cwd())
            }
    else:
        file_layer = load_sweep_file(sweep_file) if sweep_file else {}
    flag_layer = _checked_keys(dict(flags or {}), "flags")
    name = preset or file_layer.get("preset") or "quick"
    preset_layer = {key: value for key, value in catalog.preset(name).items() if key in KEYS}
    resolved = merge(RUN_DEFAULTS, preset_layer, {"preset": name}, file_layer, flag_layer)
    resolved.setdefault("jobs", default_jobs(resolved["device"], resolved["threads"]))
    return resolved


def hp_grid(hp: dict) -> dict[str, dict[str, list]]:
    """{method.key: v} or {method: {key: v}} as {method: {key: [values]}} (a scalar is a one-value grid)."""
    if not isinstance(hp, dict):
        raise ConfigError(f"hp takes {{method.key: value}} or {{method: {{key: value}}}}, got {hp!r}")
    grid: dict[str, dict[str, list]] = {}
    for key, value in hp.items():
        method, dot, name = str(key).partition(".")
        items = {name: value} if dot else value
        if not method or (dot and not name) or not isinstance(items, dict):
            raise ConfigError(
                f"bad hp key {key!r}: write METHOD.KEY (e.g. kd.temperature) or METHOD: {{KEY: ...}}"
            )
        for hp_name, values in items.items():
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise ConfigError(f"hp {method}.{hp_name} has an empty list of values")
            grid.setdefault(method, {})[hp_name] = values
    return grid


def vam_configs(settings: dict) -> list[VAMConfig]:
    """Every VAM configuration of a `vam_config` grid (lists are grids)."""
    valid = {f.name for f in fields(VAMConfig)}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ConfigError(
            f"vam_config: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    grid = {key: list(v) if isinstance(v, (list, tuple)) else [v] for key, v in settings.items()}
    return [VAMConfig(**point) for point in grid_points(grid)]


def _seeds(value) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ConfigError(f"seeds takes a number of seeds or a list of seeds, got {value!r}")
    seeds = list(range(value)) if isinstance(value, int) else value  # none at all: "nothing to train"
    if not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds):
        raise ConfigError(f"seeds must be whole numbers >= 0, got {value!r}")
    return seeds


def _names(value, what: str) -> str | list[str]:
    if isinstance(value, str):
        return value if value == "all" else [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ConfigError(f"{what} takes a comma list or a list of names, got {value!r}")


def build_request(config: dict):
    """The SweepRequest a resolved configuration describes (plugins loaded first)."""
    from kdbench.registries import METHODS
    from kdbench.sweep import SweepRequest

    imports = config.get("custom_imports", {}).get("imports", [])
    plugins.load(imports)
    methods = _names(config["methods"], "methods")
    if methods == "all":
        methods = sorted(name for name in METHODS.module_dict if "+" not in name)
    pairs = config["pairs"]
    pairs = catalog.parse_pairs(pairs if isinstance(pairs, str) else ",".join(_names(pairs, "pairs")))
    vam = {True: "on", False: "off"}.get(config["vam"], config["vam"])  # YAML reads on/off as booleans
    if vam not in VAM_MODES:
        raise ConfigError(f"vam takes on, off or both, got {config['vam']!r}")
    optional = ("data_root", "device", "force", "cohort", "precision", "compile", "threads", "jobs")
    optional += ("backend", "ray_address", "slurm")
    return SweepRequest(
        methods=methods,
        pairs=pairs,
        dataset=config["dataset"],
        recipe=Recipe.from_dict(config["recipe"]),
        teacher_recipe=Recipe.from_dict(config["teacher_recipe"]),
        seeds=_seeds(config["seeds"]),
        vam_modes=VAM_MODES[vam],
        vam_configs=vam_configs(config.get("vam_config", {})),
        student_lr=config.get("student_lr", {}),
        hp_overrides=config.get("hp", {}),
        teacher_path=config.get("teacher"),
        out=Path(config.get("out", RUN_DEFAULTS["out"])),
        plugins=tuple(imports),
        trackers=check_trackers(_names(config.get("log", []), "log")),
        **{key: config[key] for key in optional if key in config},
    )


def _with_data_choices(request, config: dict):
    """The request's recipes with the image size and the loader decided from the data
    (kdbench/data.py `resolve_recipe`), the loader `auto` where no flag, file or preset names one;
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
    from kdbench import store

    request = _with_data_choices(request, config)
    if write:
        store.ensure_writable(request.out)
        write_resolved(config, request.out, argv)
    if config.get("student_init"):
        from kdbench.data import prepare_data
        from kdbench.units import stage_student_init

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
    from kdbench.store import atomic_write_bytes

    record = resolved_record(config, argv)
    path = Path(out) / "sweeps" / f"{record['sha256'][:12]}.json"
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()
