"""The run record's shape and what it may hold: `RunRecord` (one typed definition; the engine fills its
measured part, `TrainResult`, and `new_record` assembles the rest) and `record_problem`, the check of a
record's contents that kdbench/core/store.py's `read_record` runs on every file it reads, since a record
may be hostile.

Beside the typed keys, a record holds each student wrapper's `summary` under the wrapper's name
(kdbench/wrappers/base.py): {finding: number}, or null where the run did not use it.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypedDict

from kdbench.core.errors import ConfigError
from kdbench.core.spec import SHA256_HEX, RunSpec, registered_wrappers, wrappers_in_every_spec

SCHEMA_VERSION = 1
# a record's confusion matrix is left out above this many classes (its size grows with their square)
CONFUSION_MAX_CLASSES = 256


class HistoryEntry(TypedDict, total=False):
    """One epoch of a run; test_* only on evaluated epochs, val_top1 only with a validation split."""

    epoch: int
    train_loss: float
    loss_terms: dict[str, float]  # mean of each weighted loss term over the epoch's steps
    epoch_seconds: float
    images: int
    lr: float
    test_top1: float
    test_top5: float
    val_top1: float


class Metrics(TypedDict):
    last_top1: float
    last_top5: float
    best_top1: float
    best_top5: float
    best_epoch: int


class TimeProbe(TypedDict):
    """How a run's `time_ratio_vs_student` was measured (kdbench/training/ratios.py)."""

    ratio_quartiles: list[float]  # first and third quartile of the per-pair ratios: the probe's noise
    pairs: int  # timed (run step, student step) pairs
    warmup_steps: int  # untimed steps of each before them
    step_seconds: float  # the run's step, median
    student_step_seconds: float  # the student baseline's step, median
    clock: str  # "process_cpu" (CPU) or "cuda_synchronized_wall"
    seconds: float  # the probe's own wall time, its two twins built included (a part of wall_seconds)


class Overhead(TypedDict, total=False):
    """What a run costs (kdbench/training/measure.py): params and FLOPs counted on a real training step."""

    extra_trainable_params: int  # the method's modules + a wrapper's (VAM's attention logits)
    train_flops_per_image: float  # forward + backward of the student, teacher forward included
    teacher_flops_per_image: float
    peak_memory_bytes: int
    peak_memory_method: str
    epoch_seconds: float
    # the median step-time ratio of the run to its student baseline, timed side by side in the run's process;
    # 1 for the baseline itself, None for a teacher (records before the probe: epoch seconds over the
    # baseline's, None without one)
    time_ratio_vs_student: float | None
    # None where nothing was timed (the baseline itself, a teacher, older records)
    time_probe: TimeProbe | None
    deploy_params: int  # the student as deployed (wrappers exported, e.g. VAM folded)
    deploy_flops_per_image: float
    export_max_abs_error: float | None  # max |deployed - trained| output (VAM's fold); None without wrappers


class Evaluation(TypedDict):
    """The deployed student on the test split at the last evaluated epoch, from the pass that gives its
    test top-1 / top-5 (kdbench/training/evaluation.py). Percentages are 0-100."""

    epoch: int
    images: int  # test images counted
    classes: int
    per_class_top1: list[float | None]  # per true class; None where the split holds none of it
    confusion: list[list[int]] | None  # [true][predicted] counts; None above CONFUSION_MAX_CLASSES
    ece: float | None  # expected calibration error (Guo et al., ICML 2017), %; None: outputs not finite
    ece_bins: int  # equal-width confidence bins
    agreement_top1: float | None  # % of images whose top-1 is the teacher's; None without a teacher
    teacher_kl: float | None  # mean KL(teacher || student) at temperature 1, nats; None without a teacher


class TrainResult(TypedDict, total=False):
    """The measured part of a record, as the engine returns it."""

    history: list[HistoryEntry]
    metrics: Metrics
    evaluation: Evaluation | None
    throughput_img_s: float  # training images per second (main stage)
    overhead: Overhead
    analysis: dict | None  # the trained model's own `analysis()` (e.g. the HME's routing)
    seeds: dict[
        str, int | None
    ]  # random source -> its stream's seed (kdbench/training/engine.py RANDOM_SOURCES)
    wall_seconds: float  # the whole run: cost measurement, init stage, epochs, evaluation
    final_state: dict  # the deployed student's state_dict: saved as a file by the caller, not in the record


class RunRecord(TypedDict, total=False):
    """One run: `runs/<run_id>.json`. A failed run has `error` and no metrics."""

    schema: int
    run_id: str  # spec hash (12 hex)
    kind: str  # "distill" | "teacher"
    spec: dict[str, Any]  # the fully resolved RunSpec.to_dict() (enough to re-run)
    status: str  # "done" | "failed"
    error: str | None  # why a run failed (e.g. non-finite loss at epoch 3 step 17)
    history: list[HistoryEntry]
    metrics: Metrics | None
    evaluation: Evaluation | None  # absent from records written before it existed
    wall_seconds: float
    throughput_img_s: float
    overhead: Overhead | None
    analysis: dict | None
    seeds: dict[str, int | None]
    checkpoint: dict[str, str]  # teachers: {"path": relative to the store, "sha256": ...}
    teacher: dict[str, Any] | None  # distillation runs: the teacher's sha256, test_top1, test_top5
    environment: dict[str, Any]  # python, torch, kdbench, device, threads, git_commit, platform, ...
    created: str  # ISO-8601 time


# -- what a record may hold: checked on every read, since a record may be hostile ------------------------
# A check takes (value, its dotted name) and returns what is wrong with it, or None.
_Check = Callable[[Any, str], "str | None"]


def _scalar(kind: str, fits: Callable[[Any], bool]) -> _Check:
    return lambda value, where: None if fits(value) else f"{where} must be {kind}, got {reprlib.repr(value)}"


def _number(low: float | None = None, high: float | None = None, whole: bool = False) -> _Check:
    """A finite (whole) number in [low, high]: NaN, inf and booleans never pass."""
    bounds = f" in [{low}, {high}]" if high is not None else f" >= {low}" if low is not None else ""
    return _scalar(
        f"{'a whole' if whole else 'a finite'} number{bounds}",
        lambda v: (
            isinstance(v, int if whole else (int, float))
            and not isinstance(v, bool)
            and _fits_a_float(v)
            and (low is None or v >= low)
            and (high is None or v <= high)
        ),
    )


def _fits_a_float(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        return False


def _text(pattern: str = r"(?s:.*)", kind: str = "a string") -> _Check:
    return _scalar(kind, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


def _one_of(*choices: str) -> _Check:
    return _scalar(" or ".join(choices), lambda v: isinstance(v, str) and v in choices)


def _or_null(check: _Check) -> _Check:
    return lambda value, where: None if value is None else check(value, where)


def _first(problems: Iterator[str | None]) -> str | None:
    return next((problem for problem in problems if problem), None)


def _list_of(check: _Check) -> _Check:
    def problem(value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return f"{where} must be a list, got {reprlib.repr(value)}"
        return _first(check(item, f"{where}[{index}]") for index, item in enumerate(value))

    return problem


def _mapping(fields: dict[str, _Check] | None = None, required: tuple[str, ...] = (), each=None) -> _Check:
    """A JSON object: its `fields` checked where present (others pass), `required` ones present, and
    every value checked by `each` where given (a {name: number} map)."""

    def problem(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} must be a mapping, got {reprlib.repr(value)}"
        if missing := [key for key in required if key not in value]:
            return f"{where} has no {', '.join(missing)}"
        named = ((check, key) for key, check in (fields or {}).items() if key in value)
        checks = [*named, *((each, key) for key in value if each)]
        return _first(check(value[key], f"{where}.{key}" if where else key) for check, key in checks)

    return problem


_PERCENT = _number(0, 100)
_AMOUNT = _number(low=0)  # seconds, bytes, FLOPs, images per second, a learning rate
_COUNT = _number(low=0, whole=True)
_SHA256 = _text(SHA256_HEX.pattern, "a SHA-256 (64 lowercase hex digits)")
_HISTORY_ENTRY = _mapping(
    {"epoch": _number(low=1, whole=True), "train_loss": _number(), "loss_terms": _mapping(each=_number())}
    | {"epoch_seconds": _AMOUNT, "images": _COUNT, "lr": _AMOUNT}
    | {key: _PERCENT for key in ("test_top1", "test_top5", "val_top1")},
    required=("epoch",),
)
_METRICS = _mapping(
    {key: _PERCENT for key in ("last_top1", "last_top5", "best_top1", "best_top5")} | {"best_epoch": _COUNT},
    required=tuple(Metrics.__annotations__),
)
_TIME_PROBE = _mapping(
    {"ratio_quartiles": _list_of(_AMOUNT), "pairs": _COUNT, "warmup_steps": _COUNT, "clock": _text()}
    | {key: _AMOUNT for key in ("step_seconds", "student_step_seconds", "seconds")},
    required=tuple(TimeProbe.__annotations__),
)
_OVERHEAD = _mapping(
    {key: _COUNT for key in ("extra_trainable_params", "peak_memory_bytes", "deploy_params")}
    | {key: _AMOUNT for key in ("train_flops_per_image", "teacher_flops_per_image", "epoch_seconds")}
    | {"deploy_flops_per_image": _AMOUNT, "peak_memory_method": _text()}
    | {key: _or_null(_AMOUNT) for key in ("time_ratio_vs_student", "export_max_abs_error")}
    | {"time_probe": _or_null(_TIME_PROBE)}
)
_EVALUATION_FIELDS = _mapping(
    {"epoch": _number(low=1, whole=True), "images": _number(low=1, whole=True)}
    | {"classes": _number(low=1, whole=True), "ece_bins": _number(low=1, whole=True)}
    | {"per_class_top1": _list_of(_or_null(_PERCENT)), "confusion": _or_null(_list_of(_list_of(_COUNT)))}
    | {"ece": _or_null(_PERCENT), "agreement_top1": _or_null(_PERCENT), "teacher_kl": _or_null(_AMOUNT)},
    required=tuple(Evaluation.__annotations__),
)


def _evaluation(value: Any, where: str) -> str | None:
    """Its fields' types, then its sizes: a value per class, a square confusion matrix of `images` counts."""
    if problem := _EVALUATION_FIELDS(value, where):
        return problem
    classes, confusion = value["classes"], value["confusion"]
    if len(value["per_class_top1"]) != classes:
        return f"{where}.per_class_top1 must hold {classes} values (one per class), got {len(value['per_class_top1'])}"
    if confusion is None:
        return None
    if classes > CONFUSION_MAX_CLASSES:
        return f"{where}.confusion must be null above {CONFUSION_MAX_CLASSES} classes, got {classes} classes"
    if len(confusion) != classes or any(len(row) != classes for row in confusion):
        return f"{where}.confusion must be {classes} x {classes} (classes), got another shape"
    if (total := sum(map(sum, confusion))) != value["images"]:
        return f"{where}.confusion must count {value['images']} images, got {total}"
    return None


# The typed fields of `RunRecord` and the values they may hold (the spec's own: `RunSpec.from_dict`).
RECORD_SCHEMA = _mapping(
    {
        "run_id": _text("[0-9a-f]{12}", "a run id (12 lowercase hex digits)"),
        "kind": _one_of("distill", "teacher"),
        "spec": _mapping(),
        "status": _one_of("done", "failed"),
        "error": _or_null(_text()),
        "history": _list_of(_HISTORY_ENTRY),
        "metrics": _or_null(_METRICS),
        "evaluation": _or_null(_evaluation),
        "wall_seconds": _AMOUNT,
        "throughput_img_s": _AMOUNT,
        "overhead": _or_null(_OVERHEAD),
        "analysis": _or_null(_mapping()),
        "seeds": _mapping(each=_or_null(_COUNT)),
        "checkpoint": _mapping(
            {"path": _text(r"teachers/[^/]+\.pt", "teachers/<file>.pt"), "sha256": _SHA256},
            required=("path", "sha256"),
        ),
        "teacher": _or_null(
            _mapping({"sha256": _SHA256, "test_top1": _PERCENT, "test_top5": _PERCENT}, required=("sha256",))
        ),
        "environment": _mapping(
            {"threads": _or_null(_number(low=1, whole=True)), "fused_members": _COUNT}
            # the runs of its fused group (kdbench/training/fused.py), which `kdbench rerun` trains again
            | {"fused_group": _list_of(_text("[0-9a-f]{12}", "a run id (12 lowercase hex digits)"))}
            | {"fused_style": _one_of("channels", "vmap")}  # how the group fused (kdbench/training/fused.py)
        ),
        "created": _text(),
    }
)


def new_record(
    spec: dict[str, Any],
    run_id: str,
    kind: str,
    status: str,
    environment: dict[str, Any],
    result: dict | None = None,
    error: str | None = None,
    **extra: Any,
) -> RunRecord:
    """The one place a record is assembled: spec and status, the measured part, the environment."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "kind": kind,
        "spec": spec,
        "status": status,
        "error": error,
        "history": [],
        "metrics": None,
        "evaluation": None,
        "overhead": None,
        **dict.fromkeys(wrappers_in_every_spec()),
        "analysis": None,
        **(result or {}),
        **extra,
        "environment": environment,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_SUMMARY = _or_null(_mapping(each=_number()))  # a student wrapper's summary: {finding: number}


def record_problem(record: dict, file_name: str) -> str | None:
    """What is wrong with a record read from `file_name`, or None: it must hold what RECORD_SCHEMA, the
    wrappers' summaries and `RunSpec.from_dict` allow, and agree with itself."""
    problem = RECORD_SCHEMA(record, "") or _first(
        _SUMMARY(record[name], name) for name in registered_wrappers() if name in record
    )
    if problem:
        return problem
    try:
        spec = RunSpec.from_dict(record["spec"])
    except ConfigError as err:
        return str(err)
    run_id = spec.run_id
    disagreements = (
        (record["run_id"] != run_id, f"run_id {record['run_id']} is not its spec's hash {run_id}"),
        (file_name != f"{record['run_id']}.json", f"run_id {record['run_id']} is not its file's name"),
        (record["kind"] != spec.kind, f"kind {record['kind']} is not its spec's kind {spec.kind}"),
        (record["status"] == "done" and not record.get("metrics"), "status done without metrics"),
    )
    return next((problem for wrong, problem in disagreements if wrong), None)
