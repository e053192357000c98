"""RunSpec: everything that determines a run's result, and its canonical hash.

A spec is data (torchdistill-style): `RunSpec.to_dict()` is stored in every record, and
`RunSpec.from_dict(record["spec"])` re-creates the run. The hash covers every field, so
two runs with the same hash are the same experiment. What the data *is* (`data_sha256`) and the
code of the plugins a run uses (`plugin_sha256`) are part of it; where the data lives
(`--data-root`) and which device trains it are not.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field, replace

from kdbench.core.errors import ConfigError
from kdbench.core.registries import WRAPPERS


def require_number(value, name: str, *, whole=False, low=None, above=None, below=None) -> None:
    """A ConfigError naming the setting unless `value` is a (whole) number in range."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if whole and not isinstance(value, int):
        is_number = False
    ok = (
        is_number
        and (low is None or value >= low)
        and (above is None or value > above)
        and (below is None or value < below)
    )
    if not ok:
        bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else ""]
        bounds += [f"< {below}" if below is not None else ""]
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} must be {kind} {' and '.join(b for b in bounds if b)}, got {value!r}")


SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # how a spec names a file by its bytes (store.student_init_path)


def require_sha256(value, name: str) -> None:
    """A ConfigError naming the field unless `value` is a SHA-256 as 64 lowercase hex digits: such a
    field becomes part of a path in the store, so '../x' must never pass."""
    if not (isinstance(value, str) and SHA256_HEX.fullmatch(value)):
        raise ConfigError(f"{name} must be a SHA-256 (64 lowercase hex digits), got {reprlib.repr(value)}")


def _options(hint) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _json_matches(value, hint) -> bool:
    """Whether a value read from JSON fits a dataclass field annotated `hint` (a dataclass field takes
    a mapping, a tuple a list; a bool is no number)."""
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None) or option is bool or isinstance(value, bool):
            fits = value is None if option is type(None) else option is bool and isinstance(value, bool)
        elif origin is tuple:
            item = typing.get_args(option)[0]
            fits = isinstance(value, (list, tuple)) and all(_json_matches(v, item) for v in value)
        elif dataclasses.is_dataclass(origin):
            fits = isinstance(value, dict)
        elif origin in (int, float):  # a JSON integer of hundreds of digits is no number of a run
            kinds = (int, float) if origin is float else int
            fits = isinstance(value, kinds) and not (isinstance(value, int) and abs(value) >= 2**64)
        else:
            fits = isinstance(value, origin)
        if fits:
            return True
    return False


_JSON_KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
_JSON_KINDS |= {dict: "a mapping", tuple: "a list of whole numbers", type(None): "null"}


def _json_kind(hint) -> str:
    """What a field annotated `hint` takes, in words: 'a whole number or null'."""
    kinds = [_JSON_KINDS.get(typing.get_origin(option) or option, "a mapping") for option in _options(hint)]
    return " or ".join(kinds)


_field_types = functools.cache(typing.get_type_hints)  # a dataclass's annotations, evaluated once


def _checked_fields(cls, data, what: str, required: tuple[str, ...] = ()) -> dict:
    """`data` as keyword arguments of the dataclass `cls`: a ConfigError naming the field unless it is a
    mapping of `cls`'s fields, `required` ones present, each of its annotated type (values in range are
    the dataclass's own `__post_init__` checks). A record's spec may be hostile (kdbench/core/store.py)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of its fields, got a {type(data).__name__}")
    valid = sorted(cls.__dataclass_fields__)
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {reprlib.repr(unknown)}; valid: {valid}")
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{what} has no {', '.join(missing)}")
    hints = _field_types(cls)
    for name, value in data.items():
        if not _json_matches(value, hints[name]):
            raise ConfigError(
                f"{what} field {name} must be {_json_kind(hints[name])}, got {reprlib.repr(value)}"
            )
    return dict(data)


LOADERS = ("memory", "stream", "auto")  # how a dataset is read (kdbench/data/streaming.py)


@dataclass(frozen=True)
class Recipe:
    """Optimisation recipe. Defaults: RepDistiller's CIFAR-100 recipe (Tian et al., ICLR 2020,
    train_student.py): SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs,
    lr x0.1 at epochs 150/180/210."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple[int, ...] = (150, 180, 210)
    lr_decay_rate: float = 0.1
    train_subset: int | None = None  # stratified subset of the training set (quick presets)
    val_split: float = 0.0  # held-out validation fraction carved from the training set
    eval_every: int = 1  # evaluate on the test split every N epochs (and always after the last)
    # the side images are trained at (image folders; None: the dataset's own) and how they are read:
    # decoded into memory, streamed from disk (kdbench/data/streaming.py), or auto (chosen by the data's size)
    image_size: int | None = None
    loader: str = "memory"
    # stratified subset of the test split, the same images for every seed (smoke runs; None: the whole split)
    test_subset: int | None = None

    def __post_init__(self) -> None:
        require_number(self.epochs, "epochs", whole=True, low=1)
        require_number(self.batch_size, "batch-size", whole=True, low=1)
        require_number(self.lr, "lr", above=0.0)
        require_number(self.momentum, "momentum", low=0.0, below=1.0)
        require_number(self.weight_decay, "weight-decay", low=0.0)
        require_number(self.lr_decay_rate, "lr-decay-rate", above=0.0)
        for epoch in self.lr_decay_epochs:
            require_number(epoch, "lr-decay-epochs", whole=True, low=1)
        if self.train_subset is not None:
            require_number(self.train_subset, "train-subset", whole=True, low=1)
        if self.test_subset is not None:
            require_number(self.test_subset, "test-subset", whole=True, low=1)
        require_number(self.val_split, "val-split", low=0.0, below=1.0)
        require_number(self.eval_every, "eval-every", whole=True, low=1)
        if self.image_size is not None:
            require_number(self.image_size, "image-size", whole=True, low=1)
        if self.loader not in LOADERS:
            raise ConfigError(f"loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        data = _checked_fields(cls, data, "recipe")
        if "lr_decay_epochs" in data:
            data["lr_decay_epochs"] = tuple(data["lr_decay_epochs"])
        return cls(**data)

    def with_epochs(self, epochs: int) -> Recipe:
        """Shorten (or stretch) the recipe, keeping the lr decay points at the same fractions."""
        scale = epochs / self.epochs
        decay = tuple(
            sorted({max(1, round(e * scale)) for e in self.lr_decay_epochs if round(e * scale) < epochs})
        )
        return replace(self, epochs=epochs, lr_decay_epochs=decay)


# recipe fields added after the first records were written, and their defaults (as HASH_OMITS_AT_DEFAULT)
RECIPE_HASH_OMITS_AT_DEFAULT = {"image_size": None, "loader": "memory"}
# recipe fields a spec's dict (its record, its run id) leaves out at their default: added after baselines
# were committed, whose cells key on a record's whole spec (kdbench/reporting/check.py), so a record at the
# default is the record it was before the field
RECIPE_DICT_OMITS_AT_DEFAULT = {"test_subset": None}
PRECISIONS = ("fp32", "bf16", "fp16")
# fields added after the first records were written, and their defaults
HASH_OMITS_AT_DEFAULT = {
    "precision": "fp32",
    "compile": False,
    "world_size": 1,
    "student_init_sha256": None,
    "data_sha256": None,
    "plugin_sha256": {},
}


@dataclass(frozen=True)
class RunSpec:
    method: str
    student: str
    dataset: str
    teacher: str | None = None
    teacher_sha256: str | None = None  # identity of the teacher's weights, not its path
    seed: int = 0
    # {student wrapper name: its config} (kdbench/wrappers/base.py): the wrappers the student trains in;
    # in `to_dict` (records, run ids) each is a key of its own, beside the fields
    wrappers: dict = field(default_factory=dict)
    hp: dict = field(default_factory=dict)  # resolved method hyper-parameters
    recipe: Recipe = field(default_factory=Recipe)
    kind: str = "distill"  # "distill" or "teacher"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; kdbench/training/precision.py)
    compile: bool = False  # torch.compile the student's and the teacher's training forward
    world_size: int = 1  # processes training the run together (torchrun; kdbench/core/distributed.py)
    # `--student-init`: the student starts from these weights (the file's SHA-256; store.student_init_path)
    student_init_sha256: str | None = None
    # the identity of the data the run trains and tests on (kdbench/data/__init__.py `data_digest`): a digest of
    # the decoded arrays, or of an image folder's file list and sizes; two folders never share a run id
    data_sha256: str | None = None
    # {plugin file or module: SHA-256 of its source} for each plugin that registered a name the run uses
    # (method, student, teacher, dataset, wrappers; kdbench/execution/plugins.py): an edited plugin is a new experiment
    plugin_sha256: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.wrappers, dict):
            raise ConfigError(f"wrappers must be a mapping of wrapper name to config, got {self.wrappers!r}")
        # by name, in one order (the order they wrap the student in); None is a wrapper not applied
        wrappers = {name: config for name, config in sorted(self.wrappers.items()) if config is not None}
        object.__setattr__(self, "wrappers", wrappers)

    def __hash__(self) -> int:  # dict field: hash the canonical form instead
        return hash(self.run_id)

    def to_dict(self) -> dict:
        """The spec as JSON data (a record's "spec"): each field, and each wrapper's config under the
        wrapper's name; a wrapper whose key every spec holds (`in_every_spec`) is null where not applied; a
        recipe field of RECIPE_DICT_OMITS_AT_DEFAULT is left out at its default."""
        data = asdict(self)
        data["recipe"]["lr_decay_epochs"] = list(self.recipe.lr_decay_epochs)
        for name, default in RECIPE_DICT_OMITS_AT_DEFAULT.items():
            if data["recipe"][name] == default:
                del data["recipe"][name]
        configs = data.pop("wrappers")
        return data | dict.fromkeys(wrappers_in_every_spec()) | json.loads(json.dumps(configs))

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        """The spec a record holds, checked: every field a record has always had is required (the later
        ones default, HASH_OMITS_AT_DEFAULT), each of its type; hashes are hashes; every other key names a
        registered wrapper, its config checked by the wrapper's config class; a ConfigError otherwise."""
        if not isinstance(data, dict):
            raise ConfigError(f"spec must be a mapping of its fields, got a {type(data).__name__}")
        names = [name for name in cls.__dataclass_fields__ if name != "wrappers"]
        named = {key: value for key, value in data.items() if key not in names}
        wrappers = _wrapper_configs(named, uses_plugins=bool(data.get("plugin_sha256")))
        required = tuple(name for name in names if name not in HASH_OMITS_AT_DEFAULT)
        data = _checked_fields(cls, {key: data[key] for key in names if key in data}, "spec", required)
        require_number(data["seed"], "spec seed", whole=True, low=0, below=2**64)  # torch.manual_seed's range
        require_number(data.get("world_size", 1), "spec world_size", whole=True, low=1)
        if data["kind"] not in ("distill", "teacher"):
            raise ConfigError(f"spec kind must be distill or teacher, got {reprlib.repr(data['kind'])}")
        for name in ("teacher_sha256", "student_init_sha256", "data_sha256"):
            if data.get(name) is not None:
                require_sha256(data[name], f"spec {name}")
        for plugin, digest in data.get("plugin_sha256", {}).items():
            require_sha256(digest, f"spec plugin_sha256[{reprlib.repr(plugin)}]")
        data["recipe"] = Recipe.from_dict(data["recipe"])
        return cls(**data, wrappers=wrappers)

    @property
    def run_id(self) -> str:
        """The hash of every field; a field added later is left out at its default, so the run ids
        of earlier records stay valid."""
        data = self.to_dict()
        for name, default in HASH_OMITS_AT_DEFAULT.items():
            if data[name] == default:
                del data[name]
        for name, default in RECIPE_HASH_OMITS_AT_DEFAULT.items():
            if data["recipe"][name] == default:
                del data["recipe"][name]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def pair(self) -> str:
        return f"{self.teacher}→{self.student}" if self.teacher else self.student

    @property
    def label(self) -> str:
        """How progress lines name the run (no part of its run id): `kd +VAM resnet56→resnet20 cifar100 seed=0`;
        a teacher's training `teacher resnet56 cifar100 seed=0` (its spec is the student baseline's)."""
        wrapped = "".join(f" +{wrapper_label(name)}" for name in self.wrappers)
        what = f"teacher {self.student}" if self.kind == "teacher" else f"{self.method}{wrapped} {self.pair}"
        mode = "".join(
            f" {m}"
            for m in (self.precision if self.precision != "fp32" else "", "compiled" if self.compile else "")
            if m
        )
        return f"{what} {self.dataset} seed={self.seed}{mode}"


def registered_wrappers() -> dict[str, type]:
    """{name: wrapper class} of the student wrappers registered in this process: the built-ins
    (kdbench/wrappers/, imported on first use by the registry's location) and the plugins' loaded."""
    WRAPPERS.import_from_location()
    return WRAPPERS.module_dict


def wrappers_in_every_spec() -> list[str]:
    """The wrappers whose key every spec and record holds, null where not applied (`in_every_spec`)."""
    return [name for name, wrapper in registered_wrappers().items() if wrapper.in_every_spec]


def wrapper_label(name: str) -> str:
    """How tables and labels show a wrapper: its name in capitals (`kd +VAM`, ΔVAM)."""
    return name.upper()


def wrapper_config(config_class: type, data, what: str):
    """A wrapper's config (a frozen dataclass of JSON values, kdbench/wrappers/base.py) from its mapping,
    each field checked as a spec's are; a list becomes a tuple (a config is hashable)."""
    data = _checked_fields(config_class, data, what)
    return config_class(
        **{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    )


def _wrapper_configs(named: dict, uses_plugins: bool) -> dict:
    """{wrapper name: config} of a spec's keys that are not fields: each names a registered wrapper (None:
    not applied), its config read through the wrapper's config class; a ConfigError naming those that do
    not. In a spec that uses plugins, a wrapper not registered in this process may be a plugin's not loaded
    here (a report reads records without running plugins): its config stays a mapping of JSON values, read
    through its class when the plugin is loaded (`kdbench.wrappers.build_wrappers`)."""
    registered = registered_wrappers()
    unloaded = {
        key: value
        for key, value in named.items()
        if uses_plugins and key not in registered and _is_config(value)
    }
    unknown = sorted((key for key in named if key not in registered and key not in unloaded), key=str)
    if unknown:
        fields = sorted(name for name in RunSpec.__dataclass_fields__ if name != "wrappers")
        raise ConfigError(
            f"unknown spec field(s) {reprlib.repr(unknown)}, neither a field nor a registered student "
            f"wrapper (a plugin's is known once --plugin loads it); valid: {fields}, wrappers "
            f"{sorted(registered)}"
        )
    return unloaded | {
        name: wrapper_config(registered[name].config_class, value, name)
        for name, value in named.items()
        if value is not None and name in registered
    }


def _is_config(value) -> bool:
    """A wrapper's config as JSON: a mapping of names to numbers, strings, booleans, null or lists of them."""
    scalars = (int, float, str, bool, type(None))
    return isinstance(value, dict) and all(
        isinstance(key, str)
        and (
            isinstance(item, scalars)
            or (isinstance(item, list) and all(isinstance(x, scalars) for x in item))
        )
        for key, item in value.items()
    )


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The Cartesian product of a {key: [values]} grid as a list of {key: value}, keys in sorted order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[key] for key in keys))
    ]
