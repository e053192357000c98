"""Compare two results stores: do they hold the same runs with the same numbers and models?

    python -m kdbench.devtools.compare_stores STORE_A STORE_B

A refactor that claims to change no number is checked with it: train the same sweep with the old
and the new code into two stores and compare. Records must be equal in every field except the
timings (wall time, throughput, epoch seconds, the timed probe and the time ratio it gives), their
creation date and the git commit of the code that wrote them (comparing two commits is the point); model
files (`*.pt`: teachers, checkpoints, exports) must hold equal tensors under the same
relative paths. Both are read through the store's own readers (`store.read_record`, which checks a
record, and `store.read_checkpoint`, weights only). Exit status 0 when the stores agree, 1 with one
line per difference otherwise, 2 with one line naming the file when a store holds something unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from kdbench.core import store
from kdbench.core.errors import KdbenchError

# What a record may differ in between two trainings of the same spec on one machine: timings only.
TIMING_KEYS = frozenset(
    {"wall_seconds", "throughput_img_s", "epoch_seconds", "time_ratio_vs_student", "time_probe", "created"}
)
IGNORED_KEYS = TIMING_KEYS | {"git_commit"}  # and which commit wrote the record


def without_timings(value: Any) -> Any:
    """`value` (a record read from JSON) without its timings and its commit, at any depth."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in IGNORED_KEYS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def _differences(a: Any, b: Any, where: str) -> list[str]:
    """Where two JSON values differ, as 'path: a != b' lines (NaN equals NaN: both stores wrote it)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{key}: only in {'A' if key in a else 'B'}" for key in sorted(a.keys() ^ b.keys())]
        for key in sorted(a.keys() & b.keys()):
            found += _differences(a[key], b[key], f"{where}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            line
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for line in _differences(x, y, f"{where}[{i}]")
        ]
    if a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        return []
    return [f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]


def _tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _files(store: Path, pattern: str) -> dict[str, Path]:
    return {str(path.relative_to(store)): path for path in sorted(store.rglob(pattern)) if path.is_file()}


def compare_records(store_a: Path, store_b: Path) -> tuple[int, list[str]]:
    """(records compared, differences) of the run records (`runs/*.json`) of two stores."""
    records_a, records_b = _files(store_a / "runs", "*.json"), _files(store_b / "runs", "*.json")
    found = [
        f"runs/{name}: only in {'A' if name in records_a else 'B'}"
        for name in sorted(records_a.keys() ^ records_b.keys())
    ]
    for name in sorted(records_a.keys() & records_b.keys()):
        a, b = (without_timings(store.read_record(records[name])) for records in (records_a, records_b))
        found += _differences(a, b, f"runs/{name}")
    return len(records_a.keys() & records_b.keys()), found


def compare_models(store_a: Path, store_b: Path) -> tuple[int, list[str]]:
    """(model files compared, differences) of the `*.pt` files of two stores, tensor by tensor."""
    models_a, models_b = _files(store_a, "*.pt"), _files(store_b, "*.pt")
    found = [
        f"{name}: only in {'A' if name in models_a else 'B'}"
        for name in sorted(models_a.keys() ^ models_b.keys())
    ]
    for name in sorted(models_a.keys() & models_b.keys()):
        a, b = (
            store.read_checkpoint(models[name], "model file", "compare another store")
            for models in (models_a, models_b)
        )
        if not _tensors_equal(a, b):
            found.append(f"{name}: tensors differ")
    return len(models_a.keys() & models_b.keys()), found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdbench.devtools.compare_stores", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("store_a", type=Path)
    parser.add_argument("store_b", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.store_a, args.store_b):
        if not (folder / "runs").is_dir():
            parser.error(f"{folder} is no results store (it has no runs/ folder)")
    try:
        records, record_differences = compare_records(args.store_a, args.store_b)
        models, model_differences = compare_models(args.store_a, args.store_b)
    except KdbenchError as err:  # a record or model file that the store's readers refuse
        parser.error(str(err))
    for line in record_differences + model_differences:
        print(line)
    same = not (record_differences or model_differences)
    verdict = "identical" if same else f"{len(record_differences) + len(model_differences)} difference(s)"
    print(f"{verdict}: {records} records and {models} model files compared (timings and commits excluded)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
