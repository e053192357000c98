"""Run a grid of specs: resolve teachers (train once and cache, or load a checkpoint), skip
cache hits, train the rest with the engine, write one record per run.

A failing run (non-finite loss, a pair the method cannot serve) is recorded as failed with
its reason and the sweep goes on. Records are plain files, so sweeps run on several
machines merge by copying their `runs/` folders together.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import platform
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import kdbench
from kdbench import store
from kdbench.catalog import Pair
from kdbench.engine import CheckpointError, NonFiniteLossError, PreparedData, Trainer, prepare_data
from kdbench.methods.base import Method, PairNotSupportedError, method_class
from kdbench.models import build_model, list_models
from kdbench.spec import Recipe, RunSpec, VAMConfig

BASELINE_METHOD = "student"


@dataclass
class SweepRequest:
    methods: list[str]
    pairs: list[Pair]
    dataset: str
    recipe: Recipe
    teacher_recipe: Recipe
    seeds: list[int] = field(default_factory=lambda: [0])
    vam_modes: list[bool] = field(default_factory=lambda: [False])
    vam_config: VAMConfig = field(default_factory=VAMConfig)
    student_lr: dict[str, float] = field(default_factory=dict)  # per-student lr (paper preset)
    hp_overrides: dict[str, dict] = field(default_factory=dict)
    data_root: str | None = None
    teacher_path: str | None = None
    out: Path = Path("kdbench-results")
    device: str = "cpu"
    force: bool = False
    jobs: int = 1  # runs trained at once, each in its own process
    threads: int | None = None  # torch threads per run (None: leave torch's setting)


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def environment(device: torch.device) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(kdbench.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kdbench": kdbench.__version__,
        "device": f"{device.type}:{device_name}",
        "threads": torch.get_num_threads(),
        "git_commit": commit or None,
        "platform": platform.platform(),
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_names(request: SweepRequest) -> None:
    """Fail before any training on an unknown method, model or hyper-parameter (one line, valid names)."""
    for method in request.methods:
        method_class(method).resolve_hp(request.hp_overrides.get(method))
    for method in set(request.hp_overrides) - set(request.methods):
        raise ValueError(
            f"--hp names method '{method}', which is not in --methods ({', '.join(request.methods)})"
        )
    zoo = list_models()
    for pair in request.pairs:
        for name in (pair.teacher, pair.student):
            if not name.startswith("timm:") and name not in zoo:
                build_model(name, num_classes=2)  # raises UnknownNameError with the valid names


def _guess_architecture(state: dict, num_classes: int, in_chans: int) -> str | None:
    """Which zoo model has exactly this state_dict's keys and shapes (for the error message)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in list_models():
        candidate = build_model(name, num_classes=num_classes, in_chans=in_chans).state_dict()
        if {k: tuple(v.shape) for k, v in candidate.items()} == shapes:
            return name
    return None


def load_teacher(path: Path, architecture: str, data: PreparedData, device: torch.device) -> nn.Module:
    """Load a teacher checkpoint (kdbench's or RepDistiller's {"model": state_dict}) strictly."""
    info = data.info
    if not Path(path).is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist; pass an existing file to --teacher")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / truncated / not a torch file
        raise CheckpointError(
            f"teacher checkpoint {path} is unreadable ({err}); re-save or retrain it"
        ) from err
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"teacher checkpoint {path} holds no state_dict (expected {{'model': state_dict}})"
        )
    meta = checkpoint.get("kdbench", {})
    if meta and (meta.get("dataset"), meta.get("num_classes")) != (info.name, info.num_classes):
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on {meta.get('dataset')} ({meta.get('num_classes')} classes), "
            f"this run uses {info.name} ({info.num_classes} classes); train a teacher for {info.name}"
        )
    teacher = build_model(architecture, num_classes=info.num_classes, in_chans=info.in_chans)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as err:
        found = meta.get("arch") or _guess_architecture(state, info.num_classes, info.in_chans)
        found_text = f"a '{found}'" if found else "an unknown architecture (or another dataset's class count)"
        raise CheckpointError(
            f"teacher checkpoint {path} is {found_text}, not a '{architecture}' for {info.name} "
            f"({info.num_classes} classes, {info.in_chans} channels); pass --pairs with its architecture"
        ) from err
    return teacher.to(device).eval()


@dataclass(frozen=True)
class Outcome:
    """What a finished task tells the scheduler (small and picklable: it crosses processes)."""

    run_id: str
    status: str  # "done" | "failed" | "teacher"
    teacher_path: str | None = None
    teacher_sha256: str | None = None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(device: str, threads: int) -> int:
    """Runs at once: one per `threads` CPU cores on CPU, one on an accelerator."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, available_cores() // threads)


class Sweep:
    """Run a SweepRequest: in this process (jobs=1) or on a local pool of worker processes.

    Every run is trained with `request.threads` torch threads wherever it runs, so a spec's
    numbers do not depend on `jobs` (tested). Measured on 2 CPU cores: two 1-thread runs at
    once took 0.81-1.0x the time of the same two one after another with 2 threads (resnet8 on
    Fashion-MNIST, `kdbench bench`, five runs on a VM whose speed drifts).
    """

    def __init__(
        self,
        request: SweepRequest,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.request = request
        self.out = Path(request.out)
        self.device = torch.device(request.device)
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.progress_bar = progress_bar
        if request.threads:
            torch.set_num_threads(request.threads)
        self.environment = {**environment(self.device), "concurrent_runs": request.jobs}
        self._data: dict[Recipe, PreparedData] = {}
        self._teachers: dict[str, nn.Module] = {}

    def data_for(self, recipe: Recipe) -> PreparedData:
        key = replace(recipe, epochs=0, lr=0.0)  # only subset / split matter for the data
        if key not in self._data:
            self._data[key] = prepare_data(self.request.dataset, self.request.data_root, recipe)
        return self._data[key]

    # -- teachers ----------------------------------------------------------------------------
    def teacher_spec(self, architecture: str) -> RunSpec:
        student_cls: type[Method] = method_class(BASELINE_METHOD)
        return RunSpec(
            method=BASELINE_METHOD,
            student=architecture,
            dataset=self.request.dataset,
            hp=student_cls.resolve_hp(),
            recipe=self.request.teacher_recipe,
            kind="teacher",
        )

    def teacher_module(self, architecture: str, path: Path) -> nn.Module:
        """The teacher at `path`, loaded (and checked against the dataset) once per process."""
        if str(path) not in self._teachers:
            self._teachers[str(path)] = load_teacher(
                path, architecture, self.data_for(self.request.recipe), self.device
            )
        return self._teachers[str(path)]

    def existing_teacher(self, architecture: str) -> tuple[Path, str] | None:
        """(checkpoint, sha256) of the given or cached teacher, checked; None when it must be trained."""
        if self.request.teacher_path:
            path = Path(self.request.teacher_path)
            self.teacher_module(architecture, path)  # a wrong architecture / dataset fails here
            return path, sha256_of(path)
        spec = self.teacher_spec(architecture)
        path = self.teacher_checkpoint_path(architecture)
        record = store.find_record(self.out, spec.run_id)
        if not (record and record["status"] == "done" and path.exists()) or self.request.force:
            return None
        if sha256_of(path) != record["checkpoint"]["sha256"]:
            raise CheckpointError(
                f"teacher checkpoint {path} does not match the SHA-256 in its record; delete it to retrain"
            )
        self.progress(
            f"[{spec.run_id}] teacher {architecture} cached ({record['metrics']['last_top1']:.2f}%)"
        )
        return path, record["checkpoint"]["sha256"]

    def teacher_checkpoint_path(self, architecture: str) -> Path:
        spec = self.teacher_spec(architecture)
        return self.out / "teachers" / f"{architecture}-{spec.dataset}-{spec.run_id}.pt"

    def train_teacher(self, architecture: str) -> tuple[Path, str]:
        """Train the teacher with the teacher recipe, save its checkpoint and its record."""
        spec = self.teacher_spec(architecture)
        self.progress(f"[{spec.run_id}] training teacher {architecture} on {spec.dataset}")
        teacher_data = self.data_for(spec.recipe)
        result, final_state = self._train(spec, teacher_data, teacher=None)
        payload = {
            "model": final_state,
            "kdbench": {
                "arch": architecture,
                "dataset": teacher_data.info.name,
                "num_classes": teacher_data.info.num_classes,
                "in_chans": teacher_data.info.in_chans,
                "run_id": spec.run_id,
            },
        }
        path = self.teacher_checkpoint_path(architecture)
        store.atomic_torch_save(path, payload)
        digest = sha256_of(path)
        record = self._write(
            spec, "done", result, checkpoint={"path": str(path.relative_to(self.out)), "sha256": digest}
        )
        self.progress(
            f"[{spec.run_id}] teacher {architecture}: done, top-1 {record['metrics']['last_top1']:.2f}%"
        )
        return path, digest

    def teacher_task(self, architecture: str) -> Outcome:
        """`train_teacher` as a scheduler task: its outcome carries the checkpoint and its digest."""
        path, digest = self.train_teacher(architecture)
        return Outcome(self.teacher_spec(architecture).run_id, "teacher", str(path), digest)

    def ensure_teacher(self, architecture: str) -> tuple[Path, str]:
        return self.existing_teacher(architecture) or self.train_teacher(architecture)

    # -- runs ----------------------------------------------------------------------------------
    def _train(self, spec: RunSpec, data: PreparedData, teacher: nn.Module | None) -> tuple[dict, dict]:
        started = time.perf_counter()
        trainer = Trainer(
            spec,
            data,
            teacher=teacher,
            device=self.device,
            out=self.out,
            progress=self.progress,
            progress_bar=self.progress_bar,
        )
        result = trainer.run()
        result["wall_seconds"] = time.perf_counter() - started
        final_state = result.pop("final_state")
        return result, final_state

    def _write(
        self, spec: RunSpec, status: str, result: dict | None = None, error: str | None = None, **extra
    ):
        record = {
            "schema": store.SCHEMA_VERSION,
            "run_id": spec.run_id,
            "kind": spec.kind,
            "spec": spec.to_dict(),
            "status": status,
            "error": error,
            "history": [],
            "metrics": None,
            "overhead": None,
            "vam": None,
            "analysis": None,
            **(result or {}),
            **extra,
            "environment": self.environment,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        store.write_record(self.out, record)
        store.checkpoint_path(self.out, spec.run_id).unlink(missing_ok=True)
        return record

    def train_run(self, spec: RunSpec, teacher_path: Path | None) -> Outcome:
        """Train one spec and write its record (failed, with the reason, for an expected failure)."""
        teacher = self.teacher_module(spec.teacher, teacher_path) if spec.teacher else None
        try:
            result, final_state = self._train(spec, self.data_for(spec.recipe), teacher)
        except (NonFiniteLossError, PairNotSupportedError) as err:
            self._write(spec, "failed", error=str(err))
            self.progress(f"[{spec.run_id}] {spec.label}: FAILED: {err}")
            return Outcome(spec.run_id, "failed")
        # RepDistiller's checkpoint format
        store.atomic_torch_save(self.out / "models" / f"{spec.run_id}.pt", {"model": final_state})
        record = self._write(spec, "done", result)
        self.progress(f"[{spec.run_id}] {spec.label}: done, top-1 {record['metrics']['last_top1']:.2f}%")
        return Outcome(spec.run_id, "done")

    def fill_time_ratios(self, run_ids: list[str]) -> None:
        """Epoch time relative to the plain student baseline of the same recipe, seed and device.

        Filled in after the sweep: on a pool, a run may finish before its baseline.
        """
        for run_id in run_ids:
            record = store.find_record(self.out, run_id)
            if not record or record["status"] != "done" or record["kind"] != "distill":
                continue
            spec = RunSpec.from_dict(record["spec"])
            baseline_spec = replace(
                spec,
                method=BASELINE_METHOD,
                teacher=None,
                teacher_sha256=None,
                vam=None,
                hp=method_class(BASELINE_METHOD).resolve_hp(),
            )
            baseline = store.find_record(self.out, baseline_spec.run_id)
            if (
                not baseline
                or baseline["status"] != "done"
                or baseline["environment"]["device"] != record["environment"]["device"]
            ):
                continue
            ratio = record["overhead"]["epoch_seconds"] / baseline["overhead"]["epoch_seconds"]
            if record["overhead"].get("time_ratio_vs_student") != ratio:
                record["overhead"]["time_ratio_vs_student"] = ratio
                store.write_record(self.out, record)

    def specs_for_pair(self, pair: Pair, teacher_sha: str | None) -> list[RunSpec]:
        """The pair's runs that need no teacher (teacher_sha None), or those that use this teacher."""
        request = self.request
        recipe = request.recipe
        if pair.student in request.student_lr:
            recipe = replace(recipe, lr=request.student_lr[pair.student])
        specs = []
        # the baseline first: it needs no teacher, so it trains while the teacher does
        methods = sorted(request.methods, key=lambda m: m != BASELINE_METHOD)
        for method in methods:
            method_cls: type[Method] = method_class(method)
            if method_cls.needs_teacher != (teacher_sha is not None):
                continue
            for vam_on in request.vam_modes:
                for seed in request.seeds:
                    specs.append(
                        RunSpec(
                            method=method,
                            student=pair.student,
                            dataset=request.dataset,
                            teacher=pair.teacher if method_cls.needs_teacher else None,
                            teacher_sha256=teacher_sha,
                            seed=seed,
                            vam=request.vam_config if vam_on else None,
                            hp=method_cls.resolve_hp(
                                {**pair.hp.get(method, {}), **request.hp_overrides.get(method, {})}
                            ),
                            recipe=recipe,
                        )
                    )
        return specs

    # -- scheduling ------------------------------------------------------------------------------
    def run(self) -> SweepSummary:
        """Teachers first where they must be trained; runs needing no teacher start beside them."""
        request = self.request
        validate_names(request)
        self.data_for(request.recipe)  # a missing / corrupt dataset fails before any worker starts
        summary = SweepSummary()
        teacher_methods = any(method_class(m).needs_teacher for m in request.methods)
        known_teachers: dict[str, tuple[Path, str]] = {}
        teachers_to_train: list[str] = []
        for pair in request.pairs:
            if teacher_methods and pair.teacher not in (*known_teachers, *teachers_to_train):
                found = self.existing_teacher(pair.teacher)
                if found:
                    known_teachers[pair.teacher] = found
                else:
                    teachers_to_train.append(pair.teacher)
        teacher_of_run = {self.teacher_spec(a).run_id: a for a in teachers_to_train}
        submitted: set[str] = set()  # pairs sharing a student share its baseline run
        pool = _Pool(self, request.jobs) if request.jobs > 1 else _InProcess(self)
        with pool:
            for architecture in teachers_to_train:
                pool.submit_teacher(architecture)

            def submit_pair_runs(pair: Pair, teacher: tuple[Path, str] | None) -> None:
                for spec in self.specs_for_pair(pair, teacher[1] if teacher else None):
                    if spec.run_id in submitted:
                        continue
                    submitted.add(spec.run_id)
                    existing = store.find_record(self.out, spec.run_id)
                    if existing and existing["status"] == "done" and not request.force:
                        summary.cached.append(spec.run_id)
                        self.progress(
                            f"[{spec.run_id}] {spec.label}: cached ({existing['metrics']['last_top1']:.2f}%)"
                        )
                    else:
                        pool.submit_run(spec, teacher[0] if teacher else None)

            for pair in request.pairs:
                submit_pair_runs(pair, None)
                if pair.teacher in known_teachers:
                    submit_pair_runs(pair, known_teachers[pair.teacher])
            for outcome in pool.outcomes():
                if outcome.status == "teacher":
                    architecture = teacher_of_run[outcome.run_id]
                    known_teachers[architecture] = (Path(outcome.teacher_path), outcome.teacher_sha256)
                    for pair in request.pairs:
                        if pair.teacher == architecture:
                            submit_pair_runs(pair, known_teachers[architecture])
                else:
                    (summary.done if outcome.status == "done" else summary.failed).append(outcome.run_id)
        self.fill_time_ratios(summary.done + summary.cached)
        return summary


class _InProcess:
    """Runs each task when it is submitted, in this process."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.finished: list[Outcome] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def submit_teacher(self, architecture: str) -> None:
        self.finished.append(self.sweep.teacher_task(architecture))

    def submit_run(self, spec: RunSpec, teacher_path: Path | None) -> None:
        self.finished.append(self.sweep.train_run(spec, teacher_path))

    def outcomes(self):
        while self.finished:  # a teacher's outcome submits (and so runs) its pair's runs
            yield self.finished.pop(0)


# One Sweep per worker process: it keeps the decoded dataset and the loaded teachers between tasks.
_worker_sweep: Sweep | None = None


def _start_worker(request: SweepRequest) -> None:
    global _worker_sweep
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the
    # pool; each run then resumes from its last epoch checkpoint on the next identical command.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _worker_sweep = Sweep(request, progress_bar=False)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies (a killed `kdbench run` leaves no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker_task(task: tuple) -> Outcome:
    kind, argument, teacher_path = task
    if kind == "teacher":
        return _worker_sweep.teacher_task(argument)
    return _worker_sweep.train_run(argument, Path(teacher_path) if teacher_path else None)


class _Pool:
    """`jobs` spawned worker processes (spawn: no forked torch / thread-pool state), FIFO tasks."""

    def __init__(self, sweep: Sweep, jobs: int):
        self.sweep, self.jobs = sweep, jobs
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight = 0

    def __enter__(self):
        context = multiprocessing.get_context("spawn")
        # a worker trains with the parent's thread count unless the request names one
        request = replace(self.sweep.request, threads=self.sweep.request.threads or torch.get_num_threads())
        self.pool = context.Pool(self.jobs, initializer=_start_worker, initargs=(request,))
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.pool.close()
        else:  # Ctrl-C or an error: stop the other runs now (they resume from their checkpoints)
            self.pool.terminate()
        self.pool.join()
        return False

    def _submit(self, task: tuple) -> None:
        self.in_flight += 1
        self.pool.apply_async(
            _worker_task, (task,), callback=self.results.put, error_callback=self.results.put
        )

    def submit_teacher(self, architecture: str) -> None:
        self._submit(("teacher", architecture, None))

    def submit_run(self, spec: RunSpec, teacher_path: Path | None) -> None:
        self._submit(("run", spec, str(teacher_path) if teacher_path else None))

    def outcomes(self):
        while self.in_flight:
            result = self.results.get()
            self.in_flight -= 1
            if isinstance(result, BaseException):  # an unexpected error in a worker: stop the sweep
                raise result
            yield result
