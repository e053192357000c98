"""Units of work and the worker that executes them, wherever a back-end runs it.

A unit is plain, picklable data: a teacher to train (`TeacherUnit`) or a run to train against a
teacher checkpoint (`RunUnit`). `WorkerSettings` is what every unit of a sweep shares (the store,
data location, device, threads). A `Worker` keeps the decoded datasets and the loaded teachers
between the units it executes, and writes each unit's record; a failing run (non-finite loss, a
pair its method cannot serve) is recorded as failed with its reason, never raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdbench import store, teachers
from kdbench.data import PreparedData, prepare_data
from kdbench.engine import NonFiniteLossError, train
from kdbench.environment import environment
from kdbench.methods.base import PairNotSupportedError
from kdbench.spec import Recipe, RunSpec


@dataclass(frozen=True)
class WorkerSettings:
    out: Path
    data_root: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads per run (None: leave torch's setting)
    concurrent_runs: int = 1  # recorded in the environment: how many runs shared the machine
    force: bool = False  # re-train a unit even when its record is done


@dataclass(frozen=True)
class TeacherUnit:
    spec: RunSpec  # kind "teacher": the architecture is `spec.student`


@dataclass(frozen=True)
class RunUnit:
    spec: RunSpec
    teacher_path: str | None = None  # the checkpoint whose SHA-256 is `spec.teacher_sha256`


Unit = TeacherUnit | RunUnit


@dataclass(frozen=True)
class Outcome:
    """What a finished unit tells the scheduler (small and picklable: it crosses processes)."""

    run_id: str
    status: str  # "done" | "failed" | "teacher" | "cached" (another process finished it meanwhile)
    teacher_path: str | None = None
    teacher_sha256: str | None = None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Worker:
    """Executes units in this process; one per process, it caches data and teachers between units."""

    def __init__(
        self,
        settings: WorkerSettings,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.settings = settings
        self.out = Path(settings.out)
        self.device = torch.device(settings.device)
        self.progress = progress or _stderr
        self.progress_bar = progress_bar
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.environment = {**environment(self.device), "concurrent_runs": settings.concurrent_runs}
        self._data: dict[tuple, PreparedData] = {}
        self._teachers: dict[str, nn.Module] = {}

    def data_for(self, dataset: str, recipe: Recipe) -> PreparedData:
        key = (dataset, recipe.train_subset, recipe.val_split)  # only these choose the images
        if key not in self._data:
            self._data[key] = prepare_data(dataset, self.settings.data_root, recipe)
        return self._data[key]

    def teacher_module(self, architecture: str, path: Path, data: PreparedData) -> nn.Module:
        """The teacher at `path`, loaded (and checked against the dataset) once per process."""
        if str(path) not in self._teachers:
            self._teachers[str(path)] = teachers.load_teacher(path, architecture, data.info, self.device)
        return self._teachers[str(path)]

    def execute(self, unit: Unit) -> Outcome:
        """Train the unit under the store's claim on it, unless another process finished it meanwhile."""
        with store.claim(self.out, unit.spec.run_id):
            finished = None if self.settings.force else self.finished_elsewhere(unit)
            return finished or self._execute(unit)

    def finished_elsewhere(self, unit: Unit) -> Outcome | None:
        spec = unit.spec
        if isinstance(unit, TeacherUnit):
            found = teachers.find_cached(self.out, spec, self.progress)
            return Outcome(spec.run_id, "teacher", str(found[0]), found[1]) if found else None
        record = store.find_record(self.out, spec.run_id)
        if record and record["status"] == "done":
            self.progress(f"[{spec.run_id}] {spec.label}: trained by another process meanwhile")
            return Outcome(spec.run_id, "cached")
        return None

    def _execute(self, unit: Unit) -> Outcome:
        if isinstance(unit, TeacherUnit):
            spec = unit.spec
            path, digest = teachers.train_teacher(
                spec,
                self.data_for(spec.dataset, spec.recipe),
                self.out,
                self.device,
                self.environment,
                self.progress,
                self.progress_bar,
            )
            return Outcome(spec.run_id, "teacher", str(path), digest)
        return self.train_run(unit.spec, Path(unit.teacher_path) if unit.teacher_path else None)

    def _write(self, spec: RunSpec, status: str, result: dict | None = None, error: str | None = None):
        record = store.new_record(
            spec.to_dict(), spec.run_id, spec.kind, status, self.environment, result, error
        )
        store.write_record(self.out, record)
        store.checkpoint_path(self.out, spec.run_id).unlink(missing_ok=True)
        return record

    def train_run(self, spec: RunSpec, teacher_path: Path | None) -> Outcome:
        """Train one spec and write its record (failed, with the reason, for an expected failure)."""
        data = self.data_for(spec.dataset, spec.recipe)
        teacher = self.teacher_module(spec.teacher, teacher_path, data) if spec.teacher else None
        try:
            result, final_state = train(
                spec,
                data,
                teacher=teacher,
                device=self.device,
                out=self.out,
                progress=self.progress,
                progress_bar=self.progress_bar,
            )
        except (NonFiniteLossError, PairNotSupportedError) as err:
            self._write(spec, "failed", error=str(err))
            self.progress(f"[{spec.run_id}] {spec.label}: FAILED: {err}")
            return Outcome(spec.run_id, "failed")
        # RepDistiller's checkpoint format
        store.atomic_torch_save(self.out / "models" / f"{spec.run_id}.pt", {"model": final_state})
        record = self._write(spec, "done", result)
        self.progress(f"[{spec.run_id}] {spec.label}: done, top-1 {record['metrics']['last_top1']:.2f}%")
        return Outcome(spec.run_id, "done")
