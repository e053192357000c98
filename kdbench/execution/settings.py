"""The one settings schema: every setting of every command, declared once.

A `Setting` has one name, used by the sweep-file key, the Python API keyword (`kdbench.run(**keys)`), the
request field (SweepRequest, ExplainRequest, WorkerSettings) and the parsed flag, with its type, default,
help and validation, the commands taking it, and its spelling where a user-facing one differs (the flag
`--log` and the key `log` of `trackers`; `--plugin` and mmengine's `custom_imports` of `plugins`). What
derives from it: the command line's flags (kdbench/cli/common.py `add_settings`), the sweep keys and
their check (kdbench/execution/config.py `KEYS`), the defaults every command resolves from
(`config.resolve`), the API's signature (kdbench/api.py) and the requests' setting fields
(`with_settings`). tests/execution/test_settings_schema.py checks that nothing is declared beside it.

A setting is of one kind:
- SWEEP: a key of a sweep file, a preset and the API; its flag (if any) sets that key;
- FIELD: a flag setting fields of a sweep key's mapping (`--epochs` is `recipe.epochs`, `into`);
- OPTION: a command's own configuration key, resolved like the others but not a sweep key
  (`explain --student`, `bench --images`);
- FLAG: read by its command from the command line alone (`report --format`, `run --config`).

It lives with the execution layer because its choices and conversions are that layer's: the
back-ends, the plugin files every worker loads, the run limit of a sweep (tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.execution.setting_values import (
    cohort,
    device,
    hp_overrides,
    number,
    on_off,
    plugin_files,
    tracker_names,
    whole,
    whole_list,
    wrapper_settings,
)

SWEEP, FIELD, OPTION, FLAG = "sweep", "field", "option", "flag"
DEFAULT_STORE = "kdbench-results"
# a sweep planning more runs than this is refused unless `max_runs` allows it: a grid that large is more
# often a typo (one more value list) than a plan, and its specs alone take minutes to build
MAX_RUNS = 10_000
BACKENDS = ("local", "ray", "slurm", "submitit-local")
FORMATS = ("terminal", "markdown", "csv", "latex", "html", "json")
# the commands that resolve their configuration (config.resolve), and the keys each takes from a preset
PRESET_KEYS = {
    "run": None,
    "teacher": ("dataset", "teacher_recipe"),
    "explain": ("teacher_recipe",),
    "bench": (),
}


_UNSET = object()


@dataclass(frozen=True)
class Setting:
    """One setting: its name (sweep key, API keyword, request field, parsed flag), help, kind and
    commands, how a flag's text is parsed and where its value lands, and its request field's type."""

    name: str
    help: str
    kind: str = SWEEP
    commands: tuple[str, ...] = ()  # the commands taking it as a flag
    default: Any = None  # where no flag, sweep file or preset gives one (a FLAG's: argparse's)
    parse: Any = None  # a flag's text -> its value (raises ConfigError); None: the text
    choices: tuple | None = None
    action: str | None = None  # "store_true" or "append"
    metavar: str | None = None
    required: bool = False
    positional: bool = False
    nargs: str | None = None  # a positional taking several values ("+")
    flag: str | None = None  # the flag's spelling where it is not --name-with-dashes
    key: str | None = None  # the sweep key's spelling where it is not the name
    into: tuple[tuple[str, str], ...] = ()  # FIELD: the (sweep key, field) pairs its flag sets
    to_config: Any = None  # a flag's value -> its configuration value
    mapping: bool = False  # a sweep key whose value is a mapping, merged field by field
    filled: bool = False  # a SWEEP default resolve fills in (written with the resolved configuration)
    annotation: str = "str | None"  # a request field's type
    field_default: Any = _UNSET  # a request field's default, where it is not `default`
    to_request: Any = None  # a configuration value -> a request field's
    per_command: dict = field(default_factory=dict)  # {command: {help, default, parse, into, ...}}

    def get(self, attribute: str, command: str | None = None):
        """The attribute as `command` has it (its own help, default, ...), else the setting's."""
        return self.per_command.get(command, {}).get(attribute, getattr(self, attribute))

    @property
    def sweep_key(self) -> str | None:
        return (self.key or self.name) if self.kind == SWEEP else None

    def flag_of(self, command: str) -> str | None:
        if command not in self.commands:
            return None
        return self.name if self.positional else self.flag or "--" + self.name.replace("_", "-")

    def dataclass_field(self):
        """A request's dataclass field for this setting."""
        value = self.field_default
        if value is _UNSET:
            value = (
                self.to_request(self.default)
                if self.to_request and self.default is not None
                else self.default
            )
        return field(default_factory=dict) if isinstance(value, dict) else field(default=value)


RUN, REPORT, CHECK, LIST, TEACHER, EXPLAIN, BENCH, PINS, RERUN = (
    "run", "report", "check", "list", "teacher", "explain", "bench", "pins", "rerun",
)  # fmt: skip
SITE = "site"
BOTH_RECIPES = ("recipe", "teacher_recipe")
DATA_ROOT_HELP = "dataset folder (default: $KDBENCH_DATA, then the system locations)"


def _both(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((key, name) for key in BOTH_RECIPES)


# fmt: off
_DECLARED = [
    # -- what to train ------------------------------------------------------------------------------------
    Setting("description", "one line saying what the sweep is for"),
    Setting("config", "sweep file: the keys of a preset, lists in hp and vam_config are grids; flags override "
            "it. YAML and JSON are read as data; a Python (.py) sweep file is RUN as code, with your rights: "
            "pass only one you trust", FLAG, (RUN,), metavar="FILE"),
    Setting("preset", "preset filling what the flags and the sweep file leave out (default: the file's, else "
            "quick)", commands=(RUN, TEACHER),
            per_command={TEACHER: {"default": "quick", "help": "preset whose teacher recipe is used"}}),
    Setting("plugins", "a Python file registering methods, models or datasets (repeatable; also "
            "custom_imports)", commands=(RUN, RERUN, LIST), action="append", metavar="FILE", flag="--plugin",
            key="custom_imports", to_config=plugin_files, mapping=True, annotation="tuple[str, ...]",
            field_default=(), to_request=lambda value: tuple(value["imports"]),
            per_command={
                RERUN: {"help": "a plugin the run used, in the version it used (default: its copy in "
                        "STORE/plugins)"},
                LIST: {"help": "also list what this Python file registers (repeatable; it is executed, as "
                       "in `run`)"}}),
    Setting("methods", "comma list of method names, or 'all'", commands=(RUN, BENCH),
            per_command={BENCH: {"default": "kd,crd", "help": "comma list of method names"}}),
    Setting("trackers", "per-epoch scalars to trackers, comma list: tensorboard, mlflow, wandb, aim (under "
            "STORE/trackers; each needs its package); every run also logs to STORE/logs/<run_id>.txt",
            commands=(RUN,), metavar="TRACKERS", flag="--log", key="log", annotation="tuple[str, ...]",
            field_default=(), to_request=tracker_names),
    Setting("pairs", "teacher:student[,teacher:student...] or a pair group (quick, repdistiller)",
            commands=(RUN,)),
    Setting("dataset", "dataset name (kdbench list datasets)",
            commands=(RUN, REPORT, TEACHER, EXPLAIN, BENCH),
            per_command={
                REPORT: {"help": "dataset to tabulate (default: the one with most runs)"},
                TEACHER: {"help": "dataset name (default: the preset's)"},
                EXPLAIN: {"default": "fashion-mnist"},
                BENCH: {"default": "synthetic"}}),
    Setting("data_root", "dataset folder (default: $KDBENCH_DATA, then the system locations)",
            commands=(RUN, RERUN, TEACHER, EXPLAIN, BENCH)),
    Setting("seeds", "number of seeds (0..N-1)", commands=(RUN, EXPLAIN), parse=whole(1),
            per_command={EXPLAIN: {"default": 2}}),
    Setting("epochs", "student epochs (lr decay points scale with it)", FIELD, (RUN, EXPLAIN),
            parse=whole(1), into=(("recipe", "epochs"),),
            per_command={EXPLAIN: {"default": 4, "help": "HME epochs, half soft-routed, half hard"}}),
    Setting("teacher_epochs", "epochs of a teacher trained by kdbench", FIELD, (RUN, TEACHER),
            parse=whole(1), into=(("teacher_recipe", "epochs"),)),
    Setting("train_subset", "train on a stratified subset of N images (0: all)", FIELD,
            (RUN, TEACHER, EXPLAIN), parse=whole(0), into=_both("train_subset"), to_config=lambda n: n or None,
            per_command={EXPLAIN: {"default": 6000, "into": (("recipe", "train_subset"),),
                                   "help": "stratified training subset, 0 = all"}}),
    Setting("test_subset", "test the students on a stratified subset of N test images, the same for every seed "
            "(0: all; smoke runs; the teacher's accuracy is measured on the same images)", FIELD, (RUN,),
            parse=whole(0), into=(("recipe", "test_subset"),), to_config=lambda n: n or None),
    Setting("batch_size", "student batch size (default: the preset's)", FIELD, (RUN, BENCH),
            parse=whole(1), into=(("recipe", "batch_size"),),
            per_command={BENCH: {"default": 128, "help": "batch size"}}),
    Setting("lr", "student learning rate (default: the preset's)", FIELD, (RUN,), parse=number(above=0),
            into=(("recipe", "lr"),)),
    Setting("val_split", "hold out this fraction of train as validation", FIELD, (RUN,),
            parse=number(low=0, below=1), into=(("recipe", "val_split"),)),
    Setting("image_size", "image side to train at (image folders: decoded at it; default: declared for the "
            "dataset, else the first image's; a fixed-size dataset is resized per batch after augmentation, "
            "bilinear, as a heterogeneous pair may need: the record's data.resized says so)", FIELD, (RUN, BENCH), parse=whole(1), into=_both("image_size"),
            per_command={BENCH: {"parse": whole(8), "into": (("recipe", "image_size"),),
                                 "help": "synthetic data only: image side (32 = CIFAR)"}}),
    Setting("loader", "decode the dataset into memory, stream it from disk with DataLoader workers, or auto "
            "(default: stream when the decoded data would take over half the available memory)", FIELD,
            (RUN,), choices=("memory", "stream", "auto"), into=_both("loader")),
    Setting("recipe", "student recipe fields (kdbench.core.spec.Recipe); epochs alone rescales the lr decay "
            "points", mapping=True),
    Setting("teacher_recipe", "recipe of teachers kdbench trains", mapping=True),
    Setting("student_lr", "per-student learning rate, {student: lr}", mapping=True),
    Setting("vam", "wrap the student with VAM", commands=(RUN,), choices=("on", "off", "both")),
    Setting("vam_groups", "VAM virtual blocks per conv (default 4)", FIELD, (RUN,), parse=whole(1),
            into=(("vam_config", "groups"),)),
    Setting("vam_lr_scale", "lr of VAM's attention logits / recipe lr", FIELD, (RUN,),
            parse=number(above=0), into=(("vam_config", "lr_scale"),)),
    Setting("vam_last_stages", "wrap the convolutions of the last N stages (default 1)", FIELD, (RUN,),
            parse=whole(1), into=(("vam_config", "last_stages"),)),
    Setting("vam_entropy_weight", "gamma of VAM's attention-entropy loss (default 0.01)", FIELD, (RUN,),
            parse=number(low=0), into=(("vam_config", "entropy_weight"),)),
    Setting("vam_config", "VAM settings (groups, last_stages, entropy_weight, t0, t_min, lr_scale); lists "
            "are grids", mapping=True),
    Setting("wrappers", "wrap the student with a student wrapper in every run, e.g. a plugin's (repeatable): "
            "--wrapper NAME or NAME:KEY=VALUE,...; a sweep file's {name: {key: value}}", commands=(RUN,),
            action="append", metavar="NAME[:KEY=VALUE,...]", flag="--wrapper", to_config=wrapper_settings,
            mapping=True),
    Setting("teacher", "teacher checkpoint path ({'model': state_dict}); default: train + cache",
            commands=(RUN, RERUN, EXPLAIN, BENCH),
            per_command={
                RERUN: {"help": "the teacher checkpoint (default: found by SHA-256 in the store)"},
                EXPLAIN: {"required": True, "help": "a model name (trained by the quick preset's teacher "
                          "recipe and cached) or a checkpoint path"},
                BENCH: {"default": "resnet20", "help": "teacher architecture"}}),
    Setting("teacher_arch", "architecture of a --teacher checkpoint not saved by kdbench", OPTION,
            (EXPLAIN,)),
    Setting("student", "HME model name (hme = the authors' width)", OPTION, (EXPLAIN, BENCH),
            per_command={EXPLAIN: {"default": "hme_small"},
                         BENCH: {"default": "resnet8", "help": "student architecture"}}),
    Setting("student_init", "start every student from these weights (kdbench, RepDistiller, mdistiller or "
            "timm checkpoint); its SHA-256 is part of each spec", commands=(RUN, RERUN), metavar="PATH",
            per_command={RERUN: {"help": "the run's --student-init checkpoint (default: the store's copy, "
                                 "found by SHA-256)"}}),
    Setting("hp", "override a method hyper-parameter, e.g. kd.temperature=2 (repeatable); several values "
            "are a grid, e.g. kd.temperature=2,4", commands=(RUN,), action="append",
            metavar="METHOD.KEY=VALUE", to_config=hp_overrides, mapping=True),
    Setting("precision", "student runs' precision: autocast bf16 / fp16 (with a gradient scaler) or fp32 "
            "(default: the preset's, else fp32); recorded in every spec", commands=(RUN,),
            choices=("fp32", "bf16", "fp16"), annotation="str", field_default="fp32"),
    Setting("compile", "torch.compile the student's and teacher's training forward", commands=(RUN,),
            action="store_true", annotation="bool", field_default=False),
    Setting("fuse", "train a cohort's members of one student architecture and wrapper set whose method fuses "
            "(`kdbench list methods --verbose`) as one batched student, fp32, across seeds: channel-grouped "
            "where the student allows, else by vmap; with --compile, one compiled grouped model (CUDA graphs "
            "on CUDA) (default off); each member's numbers equal its unfused run's up to fp32 "
            "reassociation, and its record names its fused group", commands=(RUN,), parse=on_off, metavar="on|off", annotation="bool",
            field_default=False),
    Setting("time_probe", "time each run's training step against its student baseline's, in turns, in the "
            "run's own process: the board's time / student (default on; off leaves it null and saves the "
            "probe's steps, e.g. for a gate that reads accuracy only; no other number changes)",
            commands=(RUN,), parse=on_off, metavar="on|off", annotation="bool", field_default=True),
    # -- how and where it trains --------------------------------------------------------------------------
    Setting("device", "torch device (cpu, cuda, cuda:1)", commands=(RUN, RERUN, TEACHER, EXPLAIN, BENCH),
            default="cpu", parse=device, filled=True, annotation="str"),
    Setting("force", "re-run specs that already have a record", commands=(RUN, TEACHER, EXPLAIN),
            action="store_true", annotation="bool", field_default=False,
            per_command={TEACHER: {"help": "retrain even when the teacher is cached"}}),
    Setting("cohort", "train runs sharing a seed and recipe in lockstep: one data pass, one teacher forward, "
            "in cohorts of at most 16 runs (N: at most N; each member's model and optimizer are held at "
            "once); default on; records are bit-identical either way", commands=(RUN,), default=True,
            parse=cohort, metavar="on|off|N", filled=True, annotation="bool | int"),
    Setting("max_runs", "refuse a sweep that plans more than N runs (default 10000; counted before any is "
            "built)", commands=(RUN,), parse=whole(1), metavar="N", annotation="int", field_default=MAX_RUNS),
    # a request built in code without `threads` leaves torch's thread count as it is
    Setting("threads", "torch threads per run on CPU (default 1); a spec reproduces exactly at the same "
            "--threads", commands=(RUN, TEACHER, EXPLAIN), default=1, parse=whole(1), filled=True,
            annotation="int | None", field_default=None,
            per_command={TEACHER: {"help": "torch threads (default 1; a spec reproduces at the same count)"}}),
    Setting("jobs", "runs trained at once, one process each (default: CPU cores / --threads; 1 on a GPU)",
            commands=(RUN, EXPLAIN), parse=whole(1), annotation="int", field_default=1),
    Setting("backend", "where runs train: local (this process, or a pool with --jobs > 1), ray, slurm (via "
            "submitit), submitit-local (submitit's jobs on this machine); off local, --out must be a folder "
            "every node sees", commands=(RUN, EXPLAIN), default="local", choices=BACKENDS, filled=True,
            annotation="str"),
    Setting("ray_address", "join this Ray cluster (auto, or HOST:PORT; default: start a local Ray); an "
            "address that accepts no connection within 30 s is refused", commands=(RUN, EXPLAIN)),
    Setting("slurm", "SLURM options: partition, gpus_per_task, time_min, array_parallelism", mapping=True,
            default={}, annotation="dict"),
    Setting("slurm_partition", "SLURM partition of the jobs", FIELD, (RUN, EXPLAIN),
            into=(("slurm", "partition"),)),
    Setting("slurm_gpus_per_task", "GPUs per SLURM job (default: 1 on cuda, else 0)", FIELD, (RUN, EXPLAIN),
            parse=whole(0), into=(("slurm", "gpus_per_task"),)),
    Setting("slurm_time", "time limit of a SLURM job in minutes (default 240); a run that outlasts it "
            "resumes in a requeued job", FIELD, (RUN, EXPLAIN), parse=whole(1), into=(("slurm", "time_min"),)),
    Setting("slurm_array_parallelism", "SLURM jobs running at once (default: submitit's cap of 256 per job "
            "array)", FIELD, (RUN, EXPLAIN), parse=whole(1), into=(("slurm", "array_parallelism"),)),
    Setting("out", "results store folder", commands=(RUN, REPORT, CHECK, TEACHER, EXPLAIN, RERUN, SITE),
            default=DEFAULT_STORE, filled=True, annotation="Path", to_request=Path,
            per_command={RERUN: {"default": None, "help": "store of the new record (default: "
                                 "STORE/reruns/<run_id>)"},
                         SITE: {"default": None, "required": True, "metavar": "DIR",
                                "help": "folder the site is written to (an empty or new folder, or one "
                                        "kdbench site wrote before)"}}),
    Setting("workers", "DataLoader workers of a streamed dataset (sets KDBENCH_WORKERS)", FLAG, (RUN,),
            parse=whole(0)),
    # -- the commands' own ----------------------------------------------------------------------------------
    Setting("format", "leaderboard format printed at the end", FLAG, (RUN, REPORT), default="terminal",
            choices=FORMATS, per_command={REPORT: {"help": "table format; html is one self-contained page, "
                                                   "csv and json are tidy data, one row per configuration and pair (the "
                                                   "caption and notes: json's)"}}),
    Setting("record", "a run record, STORE/runs/<run_id>.json", FLAG, (RERUN,), positional=True),
    Setting("plot", "also write accuracy-vs-overhead and learning-curve PNGs", FLAG, (REPORT,), metavar="DIR"),
    Setting("no_published", "omit the published reference rows", FLAG, (REPORT, SITE), action="store_true"),
    Setting("stores", "results stores to publish (their records are read and checked, never followed out "
            "of the store)", FLAG, (SITE,), positional=True, nargs="+", metavar="STORE"),
    Setting("vam_entropy", "also print the VAM attention-entropy table", FLAG, (REPORT,), action="store_true"),
    Setting("baseline", "baseline JSON (kdbench check --write-baseline makes one)", FLAG, (CHECK,),
            required=True),
    Setting("write_baseline", "write the baseline from the store instead", FLAG, (CHECK,),
            action="store_true"),
    Setting("pins", "the gate's fast tier: every method's first training steps against these pinned losses, "
            "naming the method whose math changed (default: results/baselines/step-losses.json)", FLAG,
            (CHECK,), metavar="FILE"),
    Setting("no_pins", "skip the pinned-loss tier", FLAG, (CHECK,), action="store_true"),
    Setting("alpha", "one-sided Welch test level (default: the baseline's, 0.01)", FLAG, (CHECK,),
            parse=number(above=0, below=1)),
    Setting("floor", "points a cell may drop where too few seeds allow a test (default 1)", FLAG, (CHECK,),
            parse=number(low=0)),
    Setting("what", "what to list", FLAG, (LIST,), positional=True,
            choices=("methods", "models", "datasets", "pairs", "presets")),
    Setting("verbose", "methods: each one's citation, hyper-parameters and defaults", FLAG, (LIST,),
            action="store_true"),
    Setting("name", "architecture (kdbench list models)", FLAG, (TEACHER,), positional=True),
    Setting("images", "training images per timed epoch", OPTION, (BENCH,), default=2048, parse=whole(1)),
    Setting("repeats", "timed repeats of each measure; the best counts", OPTION, (BENCH,), default=3,
            parse=whole(1)),
    Setting("num_classes", "synthetic data only: classes (100 = CIFAR-100-shaped)", OPTION, (BENCH,),
            parse=whole(2)),
    Setting("concurrent", "CUDA only: numbers of cohorts trained at once on the one card, one process each "
            "(e.g. 4,8)", OPTION, (BENCH,), default=(4, 8), parse=whole_list),
    Setting("file", "pinned losses (default: results/baselines/step-losses.json)", FLAG, (PINS,)),
    Setting("write", "re-measure and rewrite the file", FLAG, (PINS,), action="store_true"),
    Setting("add", "pin the cases that have no pin yet and keep the others, their tolerance widened to this "
            "machine's rounding (kdbench/devtools/pins.py)", FLAG, (PINS,), action="store_true"),
]
# fmt: on
SETTINGS: dict[str, Setting] = {setting.name: setting for setting in _DECLARED}
assert len(SETTINGS) == len(_DECLARED), "a setting is declared twice"


def for_command(command: str) -> list[Setting]:
    """The settings `command` takes as flags, in the order of the schema."""
    return [setting for setting in _DECLARED if command in setting.commands]


def sweep_settings() -> dict[str, Setting]:
    """Sweep key -> its setting: every key a sweep file, a preset or `kdbench.run` may hold."""
    return {setting.sweep_key: setting for setting in _DECLARED if setting.kind == SWEEP}


def keys_of(command: str) -> set[str]:
    """The configuration keys of `command`: the sweep keys, and its own OPTIONs."""
    own = {setting.name for setting in for_command(command) if setting.kind == OPTION}
    return set(sweep_settings()) | own


def defaults(command: str) -> dict:
    """What `command` resolves over before the preset: the SWEEP defaults resolve fills in, and the
    command's own defaults (its OPTIONs', and those it sets apart, e.g. explain's `epochs`)."""
    layer: dict = {}
    for setting in _DECLARED:
        own = "default" in setting.per_command.get(command, {}) or setting.kind == OPTION
        if command not in setting.commands or not (own or setting.filled):
            continue
        value = setting.get("default", command)
        if value is not None:
            _place(layer, setting, command, value)
    return layer


def flag_layer(values: dict, command: str) -> dict:
    """The configuration layer of the flags given to `command` (`values`: by setting name). None and []
    are flags not given: a resolving command's flags default to None (kdbench/cli/common.py)."""
    layer: dict = {}
    for setting in for_command(command):
        value = values.get(setting.name)
        if setting.kind == FLAG or value is None or value == []:
            continue
        _place(layer, setting, command, setting.to_config(value) if setting.to_config else value)
    return layer


def _place(layer: dict, setting: Setting, command: str, value) -> None:
    paths = setting.get("into", command)
    if not paths:
        layer[setting.sweep_key or setting.name] = value
    for key, name in paths:
        layer.setdefault(key, {})[name] = value


def request_values(config: dict, cls) -> dict:
    """A request's setting fields (`with_settings`) from a resolved configuration: those it holds."""
    found = {}
    for name in cls.__settings__:
        setting = SETTINGS[name]
        if setting.sweep_key in config:
            value = config[setting.sweep_key]
            found[name] = setting.to_request(value) if setting.to_request else value
    return found


def carried(source, cls) -> dict:
    """The setting fields of `cls` that `source` (another request) holds, as it holds them."""
    return {name: getattr(source, name) for name in cls.__settings__ if name in source.__settings__}


def with_settings(*setting_names: str):
    """Class decorator (under @dataclass): the named settings as fields, after the class's own, with the
    schema's type and default; `cls.__settings__` names them."""

    def add(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for name in setting_names:
            if name in annotations:  # declared by hand beside the schema
                raise TypeError(f"{cls.__name__}.{name} is a setting: declare it in the schema only")
            annotations[name] = SETTINGS[name].annotation
            setattr(cls, name, SETTINGS[name].dataclass_field())
        cls.__annotations__ = annotations
        cls.__settings__ = setting_names
        return cls

    return add


# the settings every unit of a sweep shares on a worker, and those a command passes on to its sweeps
WORKER = ("out", "data_root", "device", "threads", "force", "plugins", "trackers", "fuse", "time_probe")
EXECUTION = ("out", "data_root", "device", "force", "jobs", "threads", "backend", "ray_address", "slurm")
# a sweep's own: how its runs are grouped, limited, computed, extended and logged
SWEEP_REQUEST = (
    *EXECUTION,
    "cohort",
    "max_runs",
    "precision",
    "compile",
    "fuse",
    "time_probe",
    "plugins",
    "trackers",
)
