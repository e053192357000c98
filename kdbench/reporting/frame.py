"""Run records as a pandas frame (one row per record), the labels tables use, and the published numbers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.core.errors import ConfigError
from kdbench.core.spec import RunSpec, wrapper_label
from kdbench.core.store import RunRecord

BASELINE_METHOD = "student"
METRIC_KEYS = ("last_top1", "last_top5", "best_top1", "best_top5", "best_epoch")
OVERHEAD_KEYS = (
    "extra_trainable_params",
    "train_flops_per_image",
    "teacher_flops_per_image",
    "epoch_seconds",
    "time_ratio_vs_student",
    "peak_memory_bytes",
    "deploy_params",
    "deploy_flops_per_image",
)
# the scalars of a record's `evaluation` (kdbench/core/records.py `Evaluation`): calibration error (%), top-1
# agreement with the teacher (%), KL(teacher || student) in nats; NaN for old records, which have none
EVALUATION_KEYS = ("ece", "agreement_top1", "teacher_kl")
FRAME_COLUMNS = (
    # wrappers: the student wrappers the run applies, by name, joined by "+" ("" for none)
    ("run_id", "method", "label", "teacher", "student", "dataset", "seed", "wrappers", "epochs", "config")
    + ("status", "error")
    + METRIC_KEYS
    + ("wall_seconds", "throughput_img_s")
    + OVERHEAD_KEYS
    + EVALUATION_KEYS
)
SPEC_FIELDS = set(RunSpec.__dataclass_fields__) - {"wrappers"}  # a record's spec holds each wrapper by name
NUMERIC_COLUMNS = METRIC_KEYS + ("wall_seconds", "throughput_img_s") + OVERHEAD_KEYS + EVALUATION_KEYS


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{value:.0f}"


def row_label(method: str, wrappers: str) -> str:
    """A row's label: the method, then each wrapper it applies (`kd +VAM`)."""
    return method + "".join(f" +{wrapper_label(name)}" for name in wrappers.split("+") if name)


def applied_wrappers(spec: dict[str, Any]) -> str:
    """The wrappers a record's spec applies (its keys that are no RunSpec field and not null), by name,
    joined by "+" ("" for none)."""
    return "+".join(
        sorted(key for key, value in spec.items() if key not in SPEC_FIELDS and value is not None)
    )


def wrapper_names(configs: Iterable[str]) -> list[str]:
    """Every wrapper the configurations (`records_frame`'s "config") name, applied or not (VAM's key is in
    every spec, null where it is not applied)."""
    return sorted({key for config in configs for key in json.loads(config)} - SPEC_FIELDS)


def tested_on(configs: Iterable[str]) -> str:
    """The images runs of these configurations (`records_frame`'s "config") were tested on, for a caption:
    the test split, or a recipe's stratified `test_subset` of it (kdbench/data/preparation.py)."""
    sizes = {(json.loads(config).get("recipe") or {}).get("test_subset") for config in set(configs)}
    subsets = ", ".join(str(size) for size in sorted(sizes - {None}))
    if not subsets:
        return "the test split"
    if None not in sizes:
        return f"a stratified subset of {subsets} test images (test_subset, the same for every seed)"
    return (
        f"the test split, or a stratified subset of it ({subsets} images) where a recipe's test_subset says"
    )


def pair_label(teacher: str | None, student: str) -> str:
    """A leaderboard column: "teacher→student", or the bare student where no teacher was run with it."""
    # pd.isna: records_frame holds a missing teacher as None or NaN depending on the column's dtype
    return student if pd.isna(teacher) else f"{teacher}→{student}"


def _config_key(spec: dict[str, Any]) -> str:
    """The configuration of a run: its full resolved spec except the seed, as canonical JSON.

    The same key as the regression gate's cells (check.py `_key(_config(spec))`, tested equal in
    tests/reporting/test_report_stats.py), so a leaderboard cell and a baseline cell are the same set of runs.
    Not imported from check.py: check.py imports this module.
    """
    return json.dumps(
        {key: value for key, value in spec.items() if key != "seed"}, sort_keys=True, default=str
    )


def _frame_row(record: RunRecord) -> dict[str, Any]:
    spec = record["spec"]
    metrics = record.get("metrics") or {}
    overhead = record.get("overhead") or {}
    evaluation = record.get("evaluation") or {}
    wrappers = applied_wrappers(spec)
    return {
        "run_id": record.get("run_id"),
        "method": spec["method"],
        "label": row_label(spec["method"], wrappers),
        "teacher": spec.get("teacher"),
        "student": spec["student"],
        "dataset": spec["dataset"],
        "seed": spec["seed"],
        "wrappers": wrappers,
        "epochs": (spec.get("recipe") or {}).get("epochs"),
        "config": _config_key(spec),
        "status": record["status"],
        "error": record.get("error"),
        **{key: metrics.get(key) for key in METRIC_KEYS},
        "wall_seconds": record.get("wall_seconds"),
        "throughput_img_s": record.get("throughput_img_s"),
        **{key: overhead.get(key) for key in OVERHEAD_KEYS},
        **{key: evaluation.get(key) for key in EVALUATION_KEYS},
    }


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per record, flattened: the spec fields tables group by, status/error, metrics, overhead and
    the evaluation's scalars."""
    rows = [_frame_row(record) for record in records]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame[list(NUMERIC_COLUMNS)] = frame[list(NUMERIC_COLUMNS)].apply(pd.to_numeric)
    return frame


def _done_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    frame = records_frame(records)
    done = frame[frame["status"] == "done"]
    if done.empty:
        raise ConfigError("no finished runs to plot")
    return done


def _pairs(frame: pd.DataFrame) -> list[tuple[str | None, str]]:
    """Teacher/student pairs, plus bare students that no teacher was run with (a baseline-only column)."""
    taught = sorted(
        {(t, s) for t, s in zip(frame["teacher"], frame["student"], strict=True) if not pd.isna(t)}
    )
    students_with_teacher = {student for _, student in taught}
    alone = sorted(set(frame["student"][frame["teacher"].isna()]) - students_with_teacher)
    return taught + [(None, student) for student in alone]


def _pair_runs(frame: pd.DataFrame, teacher: str | None, student: str) -> pd.DataFrame:
    # The student baseline has no teacher, so it belongs to every pair with its student.
    in_pair = (
        frame["teacher"].isna()
        if teacher is None
        else frame["teacher"].isna() | (frame["teacher"] == teacher)
    )
    return frame[(frame["student"] == student) & in_pair]


def _pair_column(frame: pd.DataFrame) -> list[str]:
    """Each run's pair label, for `frame.assign(pair=...)`."""
    return [pair_label(t, s) for t, s in zip(frame["teacher"], frame["student"], strict=True)]


def load_published(path: Path | None = None) -> dict:
    """The published reference numbers (registry/published.json unless `path`); sources must resolve."""
    source = Path(path) if path else resources.files("kdbench.registry") / "published.json"
    text = source.read_text()
    published = json.loads(text)
    for entry in published["entries"] + published.get("teachers", []):
        if entry["source"] not in published["sources"]:
            raise ValueError(f"published entry {entry} names an unknown source '{entry['source']}'")
    return published
