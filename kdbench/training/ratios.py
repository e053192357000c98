"""Epoch time relative to the plain student baseline of the same recipe, seed and device.

Filled into the records after a sweep: on a pool or a cluster, a run may finish before its
baseline does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kdbench.core import store
from kdbench.core.spec import RunSpec
from kdbench.methods.base import BASELINE_METHOD, method_class


def baseline_spec(spec: RunSpec) -> RunSpec:
    """The student-only run a distillation run is compared with."""
    return replace(
        spec,
        method=BASELINE_METHOD,
        teacher=None,
        teacher_sha256=None,
        wrappers={},
        hp=method_class(BASELINE_METHOD).resolve_hp(),
    )


def fill_time_ratios(out: Path, run_ids: list[str]) -> None:
    """Set `overhead.time_ratio_vs_student` of each finished distillation run that has a baseline."""
    for run_id in run_ids:
        record = store.find_record(out, run_id)
        if not record or record["status"] != "done" or record["kind"] != "distill":
            continue
        baseline = store.find_record(out, baseline_spec(RunSpec.from_dict(record["spec"])).run_id)
        if (
            not baseline
            or baseline["status"] != "done"
            or baseline["environment"]["device"] != record["environment"]["device"]
        ):
            continue
        ratio = record["overhead"]["epoch_seconds"] / baseline["overhead"]["epoch_seconds"]
        if record["overhead"].get("time_ratio_vs_student") != ratio:
            record["overhead"]["time_ratio_vs_student"] = ratio
            store.write_record(out, record)
