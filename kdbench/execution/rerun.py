"""`kdbench rerun RECORD.json`: train one record's run again from the record alone, and compare.

Everything that can change a number is in the record: the spec (method, pair, hyper-parameters,
recipe, data subset, VAM, precision, seed), the teacher's SHA-256, the torch thread count, and, for a
fused run (kdbench/training/fused.py), the runs of its fused group (`environment.fused_group`): their
records, read from the same store, give their specs, and the group trains fused again, together.
The teacher is found by its SHA-256 among the store's teachers and saved models, or given with
`--teacher`. The new record goes to a fresh store (default `<store>/reruns/<run_id>`), and the
metrics and per-epoch losses are compared with the original's: on the same machine and thread
count they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdbench.core import store
from kdbench.core.errors import ConfigError, file_problem
from kdbench.core.progress import to_stderr
from kdbench.core.spec import RunSpec
from kdbench.execution import plugins
from kdbench.execution.units import RunUnit, TeacherUnit, Worker, WorkerSettings
from kdbench.training import teachers

# per-epoch values compared (timings and throughput legitimately differ)
EPOCH_KEYS = ("train_loss", "loss_terms", "test_top1", "test_top5", "val_top1", "lr")


@dataclass
class RerunResult:
    original: dict
    rerun: dict
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def _given_file(flag: str, given: str, sha256: str) -> Path:
    """The file the user gave for `flag`, a ConfigError unless it has the record's SHA-256."""
    path = Path(given)
    if problem := file_problem(path, missing="not found"):
        raise ConfigError(f"{flag} {path} {problem}")
    if (digest := teachers.sha256_of(path)) != sha256:
        raise ConfigError(f"{flag} {path} has SHA-256 {digest[:12]}, the record's {flag[2:]} {sha256[:12]}")
    return path


def find_teacher(sha256: str, store_root: Path, given: str | None) -> Path:
    """The checkpoint with this SHA-256: `given` (checked), else one in the store."""
    if given:
        return _given_file("--teacher", given, sha256)
    for folder in ("teachers", "models"):
        for path in sorted((store_root / folder).glob("*.pt")):
            if teachers.sha256_of(path) == sha256:
                return path
    raise ConfigError(
        f"no teacher with SHA-256 {sha256[:12]} under {store_root}/teachers or /models; pass --teacher PATH"
    )


def stage_student_init(sha256: str, store_root: Path, given: str | None, out: Path) -> None:
    """Copy the run's `--student-init` checkpoint into the new store, where the run reads it: `given`
    (checked), else the one its store keeps under its SHA-256 (store.student_init_path)."""
    source = (
        _given_file("--student-init", given, sha256) if given else store.student_init_path(store_root, sha256)
    )
    if not source.is_file():
        raise ConfigError(
            f"the record's student init {source} is missing; pass --student-init PATH (the checkpoint "
            f"with SHA-256 {sha256[:12]})"
        )
    store.atomic_write_bytes(store.student_init_path(out, sha256), source.read_bytes())


def fused_group_specs(original: dict, store_root: Path) -> list[RunSpec]:
    """The specs of the record's fused group, in its order (the record's own alone when it was not fused)."""
    group = original["environment"].get("fused_group") or [original["run_id"]]
    specs = []
    for run_id in group:
        record = store.find_record(store_root, run_id)
        if record is None:
            raise ConfigError(
                f"record {original['run_id']} was fused with run {run_id}, whose record is not in "
                f"{store_root}/runs; rerun it from the store that holds its whole fused group"
            )
        specs.append(RunSpec.from_dict(record["spec"]))
    return specs


def _differences(original: dict, rerun: dict) -> list[str]:
    found = []
    if rerun["status"] != original["status"]:
        found.append(f"status: {original['status']} -> {rerun['status']} ({rerun.get('error')})")
        return found
    for key, value in (original.get("metrics") or {}).items():
        new = (rerun.get("metrics") or {}).get(key)
        if new != value:
            found.append(f"metrics.{key}: {value} -> {new}")
    for old_epoch, new_epoch in zip(original.get("history", []), rerun.get("history", []), strict=False):
        for key in EPOCH_KEYS:
            if old_epoch.get(key) != new_epoch.get(key):
                found.append(
                    f"epoch {old_epoch['epoch']} {key}: {old_epoch.get(key)} -> {new_epoch.get(key)}"
                )
    return found


def rerun(
    record_file: Path,
    out: Path | None = None,
    teacher: str | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] = to_stderr,
    student_init: str | None = None,
    plugin_files: list[str] | tuple[str, ...] = (),
) -> RerunResult:
    """Train the record's spec again into `out` and compare the two records (`teacher`, `student_init`:
    the checkpoints the record names by SHA-256, where the record's store no longer has them). The
    plugins the run used are loaded in the recorded versions: the store's copies
    (`STORE/plugins/<sha256>.py`), or `plugin_files` with those SHA-256s (kdbench/execution/plugins.py)."""
    record_file = Path(record_file)
    problem = file_problem(record_file, missing="not found")
    if problem:
        raise ConfigError(f"record {record_file} {problem}; give a run record, STORE/runs/<run_id>.json")
    original = store.read_record(record_file)
    spec = RunSpec.from_dict(original["spec"])
    store_root = record_file.resolve().parent.parent  # <store>/runs/<run_id>.json
    out = Path(out) if out else store_root / "reruns" / spec.run_id
    if out.resolve() == store_root:  # the new record would replace the one it is compared with
        raise ConfigError(
            f"--out {out} is the store of record {record_file}; give another folder (default: "
            f"STORE/reruns/{spec.run_id})"
        )
    environment = original["environment"]
    group = [spec] if spec.kind == "teacher" else fused_group_specs(original, store_root)
    settings = WorkerSettings(
        out=out,
        data_root=data_root,
        device=device,
        threads=environment.get("threads"),
        force=True,
        fuse="fused_group" in environment,  # trained with --fuse on (fused or not), so again
    )
    for member in group:
        if member.student_init_sha256:
            stage_student_init(member.student_init_sha256, store_root, student_init, out)
        plugins.load_recorded(member.plugin_sha256, store_root, plugin_files)
        plugins.save_sources(out, member.plugin_sha256)  # the new store can be rerun in its turn
    worker = Worker(settings, progress=progress)
    if spec.kind == "teacher":
        unit = TeacherUnit(spec)
    else:
        path = find_teacher(spec.teacher_sha256, store_root, teacher) if spec.teacher_sha256 else None
        unit = RunUnit(tuple(group), str(path) if path else None)
    worker.execute(unit)
    new = store.find_record(out, spec.run_id)
    result = RerunResult(original, new, _differences(original, new))
    for key in ("threads", "torch", "device", "fused_group", "fused_style"):
        if environment.get(key) != new["environment"].get(key):
            result.differences.append(
                f"environment.{key}: {environment.get(key)} -> {new['environment'].get(key)} (numbers may differ)"
            )
    return result
