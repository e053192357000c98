"""The CI regression check: the mean last-epoch top-1 of each baseline cell against a baseline file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kdbench.report.frame import pair_label, records_frame, row_label
from kdbench.store import RunRecord, atomic_write_bytes


def _baseline_key_mask(frame: pd.DataFrame, entry: dict) -> pd.Series:
    teacher = frame["teacher"].isna() if entry["teacher"] is None else frame["teacher"] == entry["teacher"]
    return (
        (frame["method"] == entry["method"])
        & teacher
        & (frame["student"] == entry["student"])
        & (frame["dataset"] == entry["dataset"])
        & (frame["vam"] == bool(entry["vam"]))
    )


def _baseline_entry_label(entry: dict) -> str:
    pair = pair_label(entry["teacher"], entry["student"])
    return f"{row_label(entry['method'], entry['vam'])} on {entry['dataset']} {pair}"


def check_regression(
    records: Iterable[RunRecord], baseline: dict, tolerance_pts: float | None = None
) -> list[str]:
    """One message per regression: a measured last-top-1 mean below the baseline mean − tolerance, or a
    baseline entry with no finished run. `tolerance_pts` defaults to the baseline file's own."""
    tolerance = baseline["tolerance_pts"] if tolerance_pts is None else tolerance_pts
    frame = records_frame(records)
    messages = []
    for entry in baseline["entries"]:
        runs = frame[_baseline_key_mask(frame, entry)]
        done = runs[runs["status"] == "done"]
        label = _baseline_entry_label(entry)
        expected = entry["last_top1_mean"]
        if done.empty:
            failed = runs[runs["status"] != "done"]
            why = f"; {len(failed)} failed, e.g. {failed['error'].iloc[0]}" if not failed.empty else ""
            messages.append(f"{label}: no finished run (baseline {expected:.2f}){why}")
            continue
        mean = done["last_top1"].mean()
        if mean < expected - tolerance:
            messages.append(
                f"{label}: top-1 {mean:.2f} (n={len(done)}) is {expected - mean:.2f} pts below the baseline "
                f"{expected:.2f} (tolerance {tolerance:.2f})"
            )
    return messages


def write_baseline(records: Iterable[RunRecord], path: Path, tolerance_pts: float) -> dict:
    """Write the regression baseline (the mean of every finished cell) that `check_regression` reads."""
    frame = records_frame(records)
    done = frame[frame["status"] == "done"]
    entries = []
    for (method, teacher, student, dataset, vam), group in done.groupby(
        ["method", "teacher", "student", "dataset", "vam"], dropna=False
    ):
        entries.append(
            {
                "method": method,
                "teacher": None if pd.isna(teacher) else teacher,
                "student": student,
                "dataset": dataset,
                "vam": bool(vam),
                "last_top1_mean": round(float(group["last_top1"].mean()), 4),
                "n_seeds": len(group),
            }
        )
    baseline = {"tolerance_pts": tolerance_pts, "entries": entries}
    atomic_write_bytes(Path(path), (json.dumps(baseline, indent=1) + "\n").encode())
    return baseline
