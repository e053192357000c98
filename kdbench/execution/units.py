"""Units of work and the worker that executes them, wherever a back-end runs it.

A unit is plain, picklable data: a teacher to train (`TeacherUnit`) or a run to train against a
teacher checkpoint (`RunUnit`). `WorkerSettings` is what every unit of a sweep shares (the store,
data location, device, threads). A `Worker` keeps the decoded datasets and the loaded teachers
between the units it executes, and writes each unit's record; a failing run (non-finite loss, a
pair its method cannot serve) is recorded as failed with its reason, never raised. A distillation
record carries its teacher's test accuracy (`record["teacher"]`, measured once per teacher, dataset and
test subset).

`stage_student_init` checks a `--student-init` checkpoint and copies it into the store under its SHA-256,
the specs' `student_init_sha256`, where every worker's members find it (kdbench/training/member.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdbench.core import distributed, store
from kdbench.core.environment import environment
from kdbench.core.progress import to_stderr
from kdbench.core.spec import Recipe, RunSpec
from kdbench.core.trackers import RunLogs
from kdbench.data import DatasetInfo, PreparedData, check_data, prepare_data, split_sizes
from kdbench.execution import plugins
from kdbench.execution.worker_settings import WorkerSettings
from kdbench.training import teachers
from kdbench.training.engine import Cohort


@dataclass(frozen=True)
class TeacherUnit:
    spec: RunSpec  # kind "teacher": the architecture is `spec.student`

    @property
    def specs(self) -> tuple[RunSpec, ...]:
        return (self.spec,)


@dataclass(frozen=True)
class RunUnit:
    """Runs trained together, as the members of one cohort (one seed, recipe and teacher: a spec
    alone is a cohort of one) over one data stream and one teacher forward (kdbench/training/engine.py)."""

    specs: tuple[RunSpec, ...]
    teacher_path: str | None = None  # the checkpoint whose SHA-256 is the specs' `teacher_sha256`


Unit = TeacherUnit | RunUnit


@dataclass(frozen=True)
class Outcome:
    """What a finished unit tells the scheduler (small and picklable: it crosses processes)."""

    run_id: str
    status: str  # "done" | "failed" | "teacher" | "cached" (another process finished it meanwhile)
    teacher_path: str | None = None
    teacher_sha256: str | None = None


def teacher_accuracy_key(spec: RunSpec) -> tuple[str | None, str, int | None]:
    """Where a worker keeps the test accuracy of a spec's teacher: per teacher, dataset and test subset (the
    images it is measured on are the spec's own)."""
    return spec.teacher_sha256, spec.dataset, spec.recipe.test_subset


class Worker:
    """Executes units in this process; one per process, it caches data and teachers between units."""

    def __init__(
        self,
        settings: WorkerSettings,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.settings = settings
        plugins.load(settings.plugins)  # a spawned worker starts with the built-ins only
        self.out = Path(settings.out)
        self.device = torch.device(settings.device)
        self.progress = progress or to_stderr
        self.progress_bar = progress_bar
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.environment = {
            **environment(self.device),
            "concurrent_runs": settings.concurrent_runs,
            "world_size": distributed.world_size(),
            "process_group": distributed.backend(),
        }
        self._data: dict[tuple, PreparedData] = {}
        self._teachers: dict[str, nn.Module] = {}
        self._teacher_accuracy: dict[tuple, dict] = {}  # teacher_accuracy_key(spec) -> test accuracy

    def data_for(self, dataset: str, recipe: Recipe) -> PreparedData:
        # these choose the images and how they are decoded; the rest of a recipe is the training
        key = (
            dataset,
            recipe.train_subset,
            recipe.val_split,
            recipe.image_size,
            recipe.loader,
            recipe.test_subset,
        )
        if key not in self._data:
            # resident on the device: batches are sliced, augmented and normalised there
            self._data[key] = prepare_data(dataset, self.settings.data_root, recipe).to(self.device)
        return self._data[key]

    def data_of(self, spec: RunSpec) -> PreparedData:
        """The spec's data, refused (one line) when it is not the data the spec names: a store's runs on
        one folder are never rerun, nor a sweep's units trained, on another (`RunSpec.data_sha256`)."""
        data = self.data_for(spec.dataset, spec.recipe)
        check_data(spec.data_sha256, data.info, self.settings.data_root)
        return data

    def teacher_module(self, architecture: str, path: Path, data: PreparedData) -> nn.Module:
        """The teacher at `path`, loaded (and checked against the dataset) once per process."""
        if str(path) not in self._teachers:
            self._teachers[str(path)] = teachers.load_teacher(path, architecture, data.info, self.device)
        return self._teachers[str(path)]

    def teacher_accuracy(self, spec: RunSpec, teacher: nn.Module, data: PreparedData) -> dict:
        """The test accuracy of the spec's teacher on the spec's test images (teachers.teacher_test_accuracy:
        measured once per teacher, dataset and test subset, cached in the store)."""
        sha256 = spec.teacher_sha256
        key = teacher_accuracy_key(spec)
        if key not in self._teacher_accuracy:
            self._teacher_accuracy[key] = teachers.teacher_test_accuracy(
                self.out, sha256, teacher, data, self.device, spec.recipe.test_subset
            )
        return self._teacher_accuracy[key]

    def execute(self, unit: Unit) -> list[Outcome]:
        """Train the unit's runs under the store's claims on them (taken in run-id order, so two
        processes never wait on each other), except those another process finished meanwhile."""
        for spec in unit.specs:
            check_plugins(spec)
        with ExitStack() as claims:
            for run_id in sorted(spec.run_id for spec in unit.specs):
                if distributed.is_main():  # the ranks of one torchrun run train it together
                    claims.enter_context(store.claim(self.out, run_id))
            finished = [] if self.settings.force else self.finished_elsewhere(unit)
            if isinstance(unit, TeacherUnit):
                return finished or [self.train_teacher(unit.spec)]
            done = {outcome.run_id for outcome in finished}
            specs = [spec for spec in unit.specs if spec.run_id not in done]
            teacher_path = Path(unit.teacher_path) if unit.teacher_path else None
            return finished + (self.train_runs(specs, teacher_path) if specs else [])

    def finished_elsewhere(self, unit: Unit) -> list[Outcome]:
        if isinstance(unit, TeacherUnit):
            found = teachers.find_cached(self.out, unit.spec, self.progress)
            return [Outcome(unit.spec.run_id, "teacher", str(found[0]), found[1])] if found else []
        outcomes = []
        for spec in unit.specs:
            record = store.find_record(self.out, spec.run_id)
            if record and record["status"] == "done":
                self.progress(f"[{spec.run_id}] {spec.label}: trained by another process meanwhile")
                outcomes.append(Outcome(spec.run_id, "cached"))
        return outcomes

    def train_teacher(self, spec: RunSpec) -> Outcome:
        path, digest = teachers.train_teacher(
            spec,
            self.data_of(spec),
            self.out,
            self.device,
            self.environment,
            self.progress,
            self.progress_bar,
        )
        return Outcome(spec.run_id, "teacher", str(path), digest)

    def train_runs(self, specs: list[RunSpec], teacher_path: Path | None) -> list[Outcome]:
        """Train the specs as one cohort and write a record for each, logging each run to
        `logs/<run_id>.txt` and to the chosen trackers (kdbench/core/trackers.py)."""
        with RunLogs(self.out, specs, self.settings.trackers, self.progress) as logs:
            return self._train_runs(specs, teacher_path, logs)

    def _train_runs(self, specs: list[RunSpec], teacher_path: Path | None, logs: RunLogs) -> list[Outcome]:
        data = self.data_of(specs[0])
        for spec in specs[1:]:  # a cohort's members share the first one's data: each is checked
            self.data_of(spec)
        architecture = next((spec.teacher for spec in specs if spec.teacher), None)
        teacher = self.teacher_module(architecture, teacher_path, data) if architecture else None
        taught = next((spec for spec in specs if spec.teacher and spec.teacher_sha256), None)
        if teacher is not None and taught is not None:  # the unit's specs share their teacher
            self.teacher_accuracy(taught, teacher, data)
        environment = {**self.environment, "cohort_size": len(specs)}
        cohort = Cohort(
            specs,
            data,
            teacher=teacher,
            device=self.device,
            out=self.out,
            progress=logs.progress,
            progress_bar=self.progress_bar,
            on_epoch=logs.on_epoch,
            fuse=self.settings.fuse,
            time_probe=self.settings.time_probe,
        )
        outcomes = []
        for trained in cohort.run():
            # like the thread count, not part of the spec: a fused run is the same experiment
            run_environment = environment
            if self.settings.fuse:  # with its group's run ids, which `kdbench rerun` trains together again
                fused = {"fused_members": trained.fused_members, "fused_group": list(trained.fused_group)}
                fused |= {"fused_style": trained.fused_style} if trained.fused_style else {}
                run_environment = {**environment, **fused}
            outcomes.append(
                self.record(trained.spec, run_environment, error=trained.error)
                if trained.error or trained.result is None
                else self.record(
                    trained.spec, run_environment, trained.result, trained.result.pop("final_state")
                )
            )
        return outcomes

    def record(
        self,
        spec: RunSpec,
        environment: dict,
        result: dict | None = None,
        final_state: dict | None = None,
        error: Exception | None = None,
    ) -> Outcome:
        """Write the run's record (failed, with the reason, when it has an error) and its weights."""
        status = "failed" if error is not None else "done"
        if not distributed.is_main():  # rank 0 writes what every rank computed
            return Outcome(spec.run_id, status)
        if final_state is not None:  # RepDistiller's checkpoint format
            store.atomic_torch_save(self.out / "models" / f"{spec.run_id}.pt", {"model": final_state})
        record = store.new_record(
            spec.to_dict(),
            spec.run_id,
            spec.kind,
            status,
            environment,
            None if error else result,
            None if error is None else str(error),
            teacher=self._teacher_accuracy.get(teacher_accuracy_key(spec)) if spec.teacher else None,
            data=split_sizes(self.data_for(spec.dataset, spec.recipe)),
        )
        store.write_record(self.out, record)
        store.checkpoint_path(self.out, spec.run_id).unlink(missing_ok=True)
        if error is not None:
            self.progress(f"[{spec.run_id}] {spec.label}: FAILED: {error}")
        else:
            self.progress(f"[{spec.run_id}] {spec.label}: done, top-1 {record['metrics']['last_top1']:.2f}%")
        return Outcome(spec.run_id, status)


def check_plugins(spec: RunSpec) -> None:
    """Refuse to train a spec with plugin code other than the code its run id was made with: a plugin
    edited after the sweep planned its runs is loaded anew by a worker started later (kdbench/execution/plugins.py)."""
    models = (spec.student,) if spec.kind == "teacher" else (spec.student, spec.teacher)
    method = None if spec.kind == "teacher" else spec.method
    loaded = plugins.sha256_for(method, models, spec.dataset, spec.wrappers)
    if loaded != spec.plugin_sha256:
        changed = ", ".join(
            f"{key} ({str(spec.plugin_sha256.get(key))[:12]} -> {str(loaded.get(key))[:12]})"
            for key in sorted(set(loaded) | set(spec.plugin_sha256))
            if loaded.get(key) != spec.plugin_sha256.get(key)
        )
        raise plugins.PluginError(
            f"[{spec.run_id}] {spec.label}: plugin code changed since its runs were planned ({changed}); "
            "run the same command again to plan with the plugin as it is now"
        )


def stage_student_init(out: Path, path: str | Path, students: Iterable[str], info: DatasetInfo) -> str:
    """Check a `--student-init` checkpoint against every student it will start (one line naming the file
    when it does not fit), copy it into the store under its SHA-256 and return that SHA-256 (the specs'
    `student_init_sha256`): every worker, on any node sharing the store, loads it from there."""
    path = Path(path)
    for student in sorted(set(students)):
        teachers.load_model_weights(
            path, student, info, what="student init checkpoint", flag="--student-init"
        )
    digest = teachers.sha256_of(path)
    target = store.student_init_path(out, digest)
    if distributed.is_main() and not target.is_file():
        store.atomic_write_bytes(target, path.read_bytes())
    return digest
