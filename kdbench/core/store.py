"""Run records: one JSON file per run, named by the spec hash, written atomically.

Layout of a store directory (`--out`, default ./kdbench-results):
    runs/<run_id>.json        finished (status "done") or failed (status "failed") record
    checkpoints/<run_id>.pt   last-epoch checkpoint of an unfinished run (deleted when done)
    claims/<run_id>.lock      held (flock) by the process training that run
    teachers/<name>-<dataset>-<hash>.pt   cached teacher checkpoints
    teachers/<sha256>.<dataset>.test.json a teacher's test accuracy, measured once per weights and dataset
    inits/<sha256>.pt         a `--student-init` checkpoint, copied in under its SHA-256 (every worker finds it)

The record's shape is `RunRecord` (kdbench/core/records.py), defined once: the engine fills its measured
part (`TrainResult`), the sweep adds the spec, status and environment (`new_record`), the report
reads it. A record may be hostile: `read_record`, the one reader, checks each file
(`records.record_problem`: RECORD_SCHEMA and `RunSpec.from_dict`) and refuses it in one line naming the
file and the field.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError, clip, shorten
from kdbench.core.records import SCHEMA_VERSION, RunRecord, record_problem
from kdbench.core.records import TrainResult as TrainResult  # re-exported: the engine's store.TrainResult
from kdbench.core.records import new_record as new_record  # re-exported: a record is assembled as the store's
from kdbench.core.spec import require_sha256

_UMASK = os.umask(0)
os.umask(_UMASK)


class StoreError(KdbenchError, RuntimeError):
    """A results store or a file in it that cannot be used."""


class CheckpointError(KdbenchError, RuntimeError):
    """A checkpoint that cannot be used (unreadable, unsafe, wrong architecture, wrong dataset)."""


def ensure_writable(out: Path) -> Path:
    """The store folder, created if needed; a StoreError naming it when it cannot hold results."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".kdbench-write-test."):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise StoreError(f"--out {out} cannot hold results ({reason}); pass a writable folder") from err
    return out


@contextmanager
def claim(out: Path, run_id: str) -> Iterator[None]:
    """Hold the store's claim on a run while it trains: another process (or machine sharing the
    folder) that claims the same run waits here until this one is done. An advisory `flock` on
    `claims/<run_id>.lock`: the kernel drops it when its holder exits or crashes, so no claim
    outlives its owner."""
    path = Path(out) / "claims" / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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


# What other code bases' training scripts save beside the weights: RepDistiller's train_teacher.py
# (its final `{'opt': opt, 'model': ..., 'optimizer': ...}`) and timm's train.py (`'args'`) store their
# argparse options. Allowed, and only this, where a checkpoint from elsewhere is read (teachers,
# `--student-init`); building a Namespace sets attributes and runs no code.
FOREIGN_CHECKPOINT_GLOBALS = (argparse.Namespace,)


def read_checkpoint(
    path: Path, what: str = "checkpoint", remedy: str = "re-save or retrain it", allow: tuple = ()
) -> Any:
    """The project's one reader of torch files (resume checkpoints, teachers, students).

    `weights_only=True`: tensors, containers and plain values load; a pickle that would run code
    is refused as unreadable. `allow` adds classes to torch's allowlist for this read only
    (`FOREIGN_CHECKPOINT_GLOBALS`). `what` and `remedy` make the one-line error name the file's role.
    """
    import torch

    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise CheckpointError(f"{what} {path} is unreadable ({err.strerror}); {remedy}") from err
    if not head.startswith(TORCH_FILE_STARTS):
        found = "an empty file" if not head else "neither torch's zip format nor its pickle"
        raise CheckpointError(f"{what} {path} is not a torch checkpoint ({found}); {remedy}")
    # added for this read and removed after it; what the process had allowed before stays allowed
    added = [cls for cls in allow if cls not in torch.serialization.get_safe_globals()]
    try:
        with torch.serialization.safe_globals(added):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated, foreign or unsafe file
        raise CheckpointError(f"{what} {path} is unreadable ({_load_failure(err)}); {remedy}") from err


# what a file torch.save wrote starts with: its zip format, or the pickle of its legacy format
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def _load_failure(err: Exception) -> str:
    """Why torch.load refused a file, in one line. Torch's own advice, to load it again with
    `weights_only=False`, is never passed on: that would run whatever code the file holds."""
    text = str(err)
    unsafe = re.search(r"GLOBAL (\S+)", text)
    if unsafe:
        return f"it holds '{unsafe.group(1)}', not only weights, and kdbench loads weights only"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"not a torch checkpoint: {detail.group(1).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return clip(lines[0].split(". ")[0], 200) if lines else type(err).__name__


def state_dict_of(checkpoint: Any) -> dict | None:
    """The model weights in a checkpoint, or None where it holds none. Layouts: kdbench's, RepDistiller's
    and mdistiller's `{"model": state_dict, ...}`, timm's `{"state_dict": ...}`, a bare state_dict;
    mdistiller's full training state (`{"model": its distiller's state}`, keys `module.student.*`) gives
    the student's; a `module.` prefix on every key (DataParallel) is dropped."""
    import torch

    if not isinstance(checkpoint, dict):
        return None
    state = next(
        (checkpoint[key] for key in ("model", "state_dict") if isinstance(checkpoint.get(key), dict)),
        checkpoint,
    )
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return None
    for prefix in ("module.student.", "module."):
        if any(key.startswith(prefix) for key in state) and (
            prefix == "module.student." or all(key.startswith(prefix) for key in state)
        ):
            return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return dict(state)


def student_init_path(out: Path, sha256: str) -> Path:
    """Where a `--student-init` checkpoint lives in the store: named by its bytes, so every worker finds it."""
    require_sha256(sha256, "a student init's SHA-256")  # it becomes a file name: '../x' never passes
    return Path(out) / "inits" / f"{sha256}.pt"


def read_student_init(out: Path, sha256: str) -> dict:
    """The weights of the `--student-init` checkpoint `sha256` copied into the store, checked."""
    import hashlib

    path = student_init_path(out, sha256)
    if not path.is_file():
        raise CheckpointError(
            f"student init {path} is missing (the run's student_init_sha256); pass the file to --student-init again"
        )
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise CheckpointError(
            f"student init {path} does not match its SHA-256; delete it and pass --student-init"
        )
    state = state_dict_of(read_checkpoint(path, "student init", allow=FOREIGN_CHECKPOINT_GLOBALS))
    if state is None:
        raise CheckpointError(f"student init {path} holds no state_dict")
    return state


def teacher_eval_path(out: Path, sha256: str, dataset: str, test_subset: int | None = None) -> Path:
    """The cached test accuracy of the teacher weights `sha256` on `dataset`'s test split, or on the
    stratified `test_subset` of it (a recipe's `test_subset`: a file of its own)."""
    require_sha256(sha256, "a teacher's SHA-256")  # it becomes a file name: '../x' never passes
    split = "test" if test_subset is None else f"test{int(test_subset)}"
    return Path(out) / "teachers" / f"{sha256}.{dataset}.{split}.json"


def write_record(out: Path, record: RunRecord) -> Path:
    path = record_path(out, record["run_id"])
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


# the keys every record has, whatever its status (RunRecord lists them all)
_REQUIRED_KEYS = ("schema", "run_id", "kind", "spec", "status", "environment")


def read_record(path: Path) -> RunRecord:
    """A record from its file; a StoreError naming the file when it is unreadable or not a record."""
    try:
        record = json.loads(_record_bytes(Path(path)), object_pairs_hook=unique_json_keys)
    # ValueError: bad JSON, a repeated key, or bytes that are not UTF-8; RecursionError: nested too deep
    except (OSError, ValueError, RecursionError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise StoreError(f"cannot read run record {path}: {reason}; delete it and re-run that spec") from err
    if not isinstance(record, dict):
        raise StoreError(
            f"{path} is not a run record (a JSON {type(record).__name__}); delete it or move it away"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in record]
    schema = record.get("schema")
    if "schema" not in missing and (type(schema) is not int or schema != SCHEMA_VERSION):  # True == 1
        raise StoreError(
            f"run record {path} has schema {clip(repr(schema))} ({type(schema).__name__}), expected the "
            f"number {SCHEMA_VERSION}; it was written by another version of kdbench or edited"
        )
    if missing:
        raise StoreError(f"{path} is not a run record (no {', '.join(missing)}); delete it or move it away")
    if problem := record_problem(record, Path(path).name):
        raise StoreError(f"run record {path}: {problem}; delete it or move it away")
    return record


# A record is a few hundred KB at most (one history entry per epoch); a bigger file is no record.
MAX_RECORD_BYTES = 64 * 2**20


def _record_bytes(path: Path) -> bytes:
    """A record file's bytes: a regular file, not a symbolic link (it could lead out of the store, or to
    a device or pipe that never ends), and not too big to be one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise OSError(f"it is a symbolic link (to {os.readlink(path)}), not a record file") from err
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"not a regular file ({stat.filemode(status.st_mode)})")
        if status.st_size > MAX_RECORD_BYTES:
            raise OSError(f"{status.st_size} bytes, more than a record's {MAX_RECORD_BYTES}")
        return handle.read()


def unique_json_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are unique (`json.loads`'s `object_pairs_hook`, for records and sweep
    files alike): with a key twice, which value was meant is a guess."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"the key {shorten(repeated)} appears twice in one object; keep one")
    return dict(pairs)


def find_record(out: Path, run_id: str) -> RunRecord | None:
    path = record_path(out, run_id)
    return read_record(path) if path.exists() else None


def load_records(out: Path, kind: str | None = "distill") -> list[RunRecord]:
    """All records under a store (any number of merged stores: records are plain files)."""
    directory = runs_dir(out)
    if not directory.is_dir():
        return []
    records = [read_record(p) for p in sorted(directory.glob("*.json"))]
    return [r for r in records if kind is None or r.get("kind") == kind]
