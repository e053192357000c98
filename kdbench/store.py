"""Run records: one JSON file per run, named by the spec hash, written atomically.

Layout of a store directory (`--out`, default ./kdbench-results):
    runs/<run_id>.json        finished (status "done") or failed (status "failed") record
    checkpoints/<run_id>.pt   last-epoch checkpoint of an unfinished run (deleted when done)
    teachers/<name>-<dataset>-<hash>.pt   cached teacher checkpoints

Record schema (version 1):
    schema: 1
    run_id: str                        spec hash (12 hex)
    kind: "distill" | "teacher"
    spec: dict                         the fully resolved RunSpec (enough to re-run)
    status: "done" | "failed"
    error: str | None                  why a run failed (e.g. non-finite loss at epoch 3 step 17)
    history: [ {epoch, train_loss, loss_terms: {name: mean}, test_top1, test_top5,
                val_top1?, epoch_seconds, lr} ]
    metrics: {last_top1, last_top5, best_top1, best_top5, best_epoch}
    wall_seconds: float
    throughput_img_s: float            training images per second (main stage)
    overhead: {extra_trainable_params, train_flops_per_image, teacher_flops_per_image,
               epoch_seconds, time_ratio_vs_student (None until a student baseline exists),
               peak_memory_bytes, peak_memory_method, deploy_params, deploy_flops_per_image}
    vam: {layer_name: attention row entropy (nats)} | None
    analysis: dict | None              the trained model's own `analysis()` (e.g. the HME's routing)
    environment: {python, torch, kdbench, device, threads, git_commit, platform}
    created: ISO-8601 time
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


class StoreError(RuntimeError):
    pass


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def checkpoint_path(out: Path, run_id: str) -> Path:
    return Path(out) / "checkpoints" / f"{run_id}.pt"


def record_path(out: Path, run_id: str) -> Path:
    return runs_dir(out) / f"{run_id}.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_torch_save(path: Path, obj) -> None:
    """torch.save, atomically (checkpoints, teacher and student weights)."""
    import torch  # only the writers of weights need it; reading records stays torch-free

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_record(out: Path, record: dict) -> Path:
    path = record_path(out, record["run_id"])
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"cannot read run record {path}: {err}; delete it and re-run that spec") from err
    if record.get("schema") != SCHEMA_VERSION:
        raise StoreError(f"run record {path} has schema {record.get('schema')}, expected {SCHEMA_VERSION}")
    return record


def find_record(out: Path, run_id: str) -> dict | None:
    path = record_path(out, run_id)
    return read_record(path) if path.exists() else None


def load_records(out: Path, kind: str | None = "distill") -> list[dict]:
    """All records under a store (any number of merged stores: records are plain files)."""
    directory = runs_dir(out)
    if not directory.is_dir():
        return []
    records = [read_record(p) for p in sorted(directory.glob("*.json"))]
    return [r for r in records if kind is None or r.get("kind") == kind]
