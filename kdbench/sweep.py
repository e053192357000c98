"""A sweep: a request (methods x pairs x seeds x VAM) planned into units of work and scheduled on
a back-end. Teachers are resolved first (given, cached or to be trained); runs that need no
teacher start beside a teacher being trained; finished records are skipped.

A failing run (non-finite loss, a pair the method cannot serve) is recorded as failed with its
reason and the sweep goes on. Records are plain files, so sweeps run on several machines merge by
copying their `runs/` folders together.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from kdbench import distributed, ratios, store, teachers
from kdbench.backends import Backend, open_backend
from kdbench.catalog import Pair
from kdbench.cohort import plan_cohorts
from kdbench.data import DatasetInfo, prepare_data
from kdbench.errors import ConfigError
from kdbench.methods.base import BASELINE_METHOD, method_class
from kdbench.models import build_model, list_models
from kdbench.progress import bar, to_stderr
from kdbench.spec import Recipe, RunSpec, VAMConfig, grid_points
from kdbench.units import RunUnit, TeacherUnit, WorkerSettings


@dataclass
class SweepRequest:
    methods: list[str]
    pairs: list[Pair]
    dataset: str
    recipe: Recipe
    teacher_recipe: Recipe
    seeds: list[int] = field(default_factory=lambda: [0])
    vam_modes: list[bool] = field(default_factory=lambda: [False])
    vam_configs: list[VAMConfig] = field(default_factory=lambda: [VAMConfig()])  # a grid: each is a config
    student_lr: dict[str, float] = field(default_factory=dict)  # per-student lr (paper preset)
    # {method: {key: value or [values]}}: a list is a grid, each method trains its own keys' product
    hp_overrides: dict[str, dict] = field(default_factory=dict)
    data_root: str | None = None
    teacher_path: str | None = None
    out: Path = Path("kdbench-results")
    device: str = "cpu"
    force: bool = False
    jobs: int = 1  # units trained at once, each in its own process
    cohort: bool = True  # train runs sharing a seed and recipe as cohorts (kdbench/cohort.py)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (kdbench/precision.py)
    compile: bool = False  # torch.compile the training forwards
    threads: int | None = None  # torch threads per run (None: leave torch's setting)
    backend: str = "local"  # local (this process for jobs 1, else a pool) | ray | slurm | submitit-local
    ray_address: str | None = None  # None: a local Ray; "auto" or HOST:PORT: join that cluster
    slurm: dict = field(default_factory=dict)  # SlurmBackend options: partition, gpus_per_task, time_min
    plugins: tuple[str, ...] = ()  # plugin files and modules every worker loads (kdbench/plugins.py)
    trackers: tuple[str, ...] = ()  # per-epoch scalars to these back-ends (kdbench/trackers.py)
    student_init_sha256: str | None = None  # every student starts from these weights (--student-init)


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def validate_names(request: SweepRequest) -> None:
    """Fail before any training on an unknown method, model or hyper-parameter (one line, valid names)."""
    if not request.methods or not request.pairs or not request.seeds or not request.vam_modes:
        raise ConfigError("nothing to train: methods, pairs, seeds and VAM modes must each name at least one")
    for method in request.methods:
        for point in hp_points(request, method):
            method_class(method).resolve_hp(point)
        if distributed.world_size() > 1 and not method_class(method).distributed_ok:
            raise ConfigError(
                f"{method} cannot train on {distributed.world_size()} processes (its state follows "
                "individual samples); run it without torchrun"
            )
    for method in set(request.hp_overrides) - set(request.methods):
        raise ConfigError(
            f"--hp names method '{method}', which is not in --methods ({', '.join(request.methods)})"
        )
    zoo = list_models()
    for pair in request.pairs:
        for name in (pair.teacher, pair.student):
            if not name.startswith("timm:") and name not in zoo:
                build_model(name, num_classes=2)  # raises UnknownNameError with the valid names


def hp_points(request: SweepRequest, method: str) -> list[dict]:
    """The method's hyper-parameter overrides, one dict per point of its grid (lists are grids)."""
    grid = {
        key: list(value) if isinstance(value, (list, tuple)) else [value]
        for key, value in request.hp_overrides.get(method, {}).items()
    }
    return grid_points(grid)


def specs_for_pair(request: SweepRequest, pair: Pair, teacher_sha: str | None) -> list[RunSpec]:
    """The pair's runs that need no teacher (teacher_sha None), or those that use this teacher."""
    recipe = request.recipe
    if pair.student in request.student_lr:
        recipe = replace(recipe, lr=request.student_lr[pair.student])
    specs = []
    # the baseline first: it needs no teacher, so it trains while the teacher does
    for method in sorted(request.methods, key=lambda m: m != BASELINE_METHOD):
        method_cls = method_class(method)
        if method_cls.needs_teacher != (teacher_sha is not None):
            continue
        vam_options = [None] * (False in request.vam_modes) + request.vam_configs * (
            True in request.vam_modes
        )
        for point, vam, seed in itertools.product(hp_points(request, method), vam_options, request.seeds):
            spec = RunSpec(
                method=method,
                student=pair.student,
                dataset=request.dataset,
                teacher=pair.teacher if method_cls.needs_teacher else None,
                teacher_sha256=teacher_sha,
                seed=seed,
                vam=vam,
                hp=method_cls.resolve_hp({**pair.hp.get(method, {}), **point}),
                recipe=recipe,
                precision=request.precision,
                compile=request.compile,
                world_size=distributed.world_size(),
                student_init_sha256=request.student_init_sha256,
            )
            if spec not in specs:  # grid points that resolve alike train once
                specs.append(spec)
    return specs


class Sweep:
    """Run a SweepRequest on a back-end: in this process (jobs=1), on a local pool, Ray or SLURM.

    Every run is trained with `request.threads` torch threads wherever it runs, so a spec's
    numbers do not depend on `jobs` (tested).
    """

    def __init__(
        self,
        request: SweepRequest,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.request = request
        self.out = Path(request.out)
        self.progress = progress or to_stderr
        self.progress_bar = progress_bar
        self.summary = SweepSummary()
        self.submitted: set[str] = set()  # pairs sharing a student share its baseline run
        self.bar = bar(disable=True)  # finished runs, on a terminal where runs train elsewhere (`runs_bar`)

    def backend(self) -> Backend:
        """The request's back-end by name (kdbench/backends/__init__.py)."""
        request = self.request
        settings = WorkerSettings(
            out=self.out,
            data_root=request.data_root,
            device=request.device,
            threads=request.threads,
            concurrent_runs=request.jobs,
            force=request.force,
            plugins=request.plugins,
            trackers=request.trackers,
        )
        return open_backend(
            request.backend,
            settings,
            request.jobs,
            ray_address=request.ray_address,
            slurm=request.slurm,
            progress=self.progress,
            progress_bar=self.progress_bar,
        )

    def known_teacher(self, architecture: str, info: DatasetInfo) -> tuple[Path, str] | None:
        """(checkpoint, sha256) of the given or cached teacher, checked; None when it must be trained."""
        request = self.request
        if request.teacher_path:
            path = Path(request.teacher_path)
            teachers.load_teacher(
                path, architecture, info, torch.device("cpu")
            )  # wrong arch / dataset fail here
            return path, teachers.sha256_of(path)
        if request.force:
            return None
        spec = teachers.teacher_spec(architecture, request.dataset, request.teacher_recipe)
        return teachers.find_cached(self.out, spec, self.progress)

    def pending(self, pair: Pair, teacher: tuple[Path, str] | None) -> list[RunSpec]:
        """The pair's specs (without a teacher, or with this one) not yet submitted nor finished."""
        specs = []
        for spec in specs_for_pair(self.request, pair, teacher[1] if teacher else None):
            if spec.run_id in self.submitted:
                continue
            self.submitted.add(spec.run_id)
            existing = store.find_record(self.out, spec.run_id)
            if existing and existing["status"] == "done" and not self.request.force:
                self.summary.cached.append(spec.run_id)
                self.progress(
                    f"[{spec.run_id}] {spec.label}: cached ({existing['metrics']['last_top1']:.2f}%)"
                )
            else:
                specs.append(spec)
        return specs

    def submit(self, backend: Backend, specs: list[RunSpec], teacher: tuple[Path, str] | None) -> None:
        """One unit per cohort (or per run with --cohort off); see `cohorts`."""
        teacher_path = str(teacher[0]) if teacher else None
        self.bar.total = (self.bar.total or 0) + len(specs)
        self.bar.refresh()
        alone = distributed.world_size() > 1  # the ranks of a torchrun run train one run at a time
        for members in plan_cohorts(specs, self.request.jobs, self.request.cohort and not alone):
            backend.submit(RunUnit(tuple(members), teacher_path))

    def runs_bar(self) -> tqdm:
        """A bar of finished runs for a terminal when runs train in other processes (a pool, Ray,
        SLURM), whose epoch bars would garble each other; in this process the engine draws them."""
        elsewhere = self.request.jobs > 1 or self.request.backend != "local"
        shown = sys.stderr.isatty() if self.progress_bar is None else self.progress_bar
        return bar(total=0, desc="runs", unit="run", disable=not (shown and elsewhere))

    def run(self) -> SweepSummary:
        """Teachers first where they must be trained; runs needing no teacher start beside them."""
        request = self.request
        validate_names(request)
        store.ensure_writable(self.out)
        distributed.barrier()  # every rank plans from the same store: none has written yet
        if distributed.backend() is not None:  # under torchrun the ranks train in their own process,
            self.request = request = replace(request, jobs=1)  # stepping together through one run at a time
        info = prepare_data(
            request.dataset, request.data_root, request.recipe
        ).info  # a bad dataset fails here
        teacher_methods = any(method_class(m).needs_teacher for m in request.methods)
        known: dict[str, tuple[Path, str]] = {}  # architecture -> (checkpoint, sha256)
        to_train: dict[str, RunSpec] = {}  # teacher run id -> its spec
        for pair in request.pairs:
            training = {spec.student for spec in to_train.values()}
            if teacher_methods and pair.teacher not in known and pair.teacher not in training:
                found = self.known_teacher(pair.teacher, info)
                if found:
                    known[pair.teacher] = found
                else:
                    spec = teachers.teacher_spec(pair.teacher, request.dataset, request.teacher_recipe)
                    to_train[spec.run_id] = spec
        with self.backend() as backend, self.runs_bar() as self.bar:
            for spec in to_train.values():
                backend.submit(TeacherUnit(spec))
            for pair in request.pairs:  # with a known teacher, the baseline rides in its cohorts
                teacher = known.get(pair.teacher)
                self.submit(
                    backend,
                    self.pending(pair, None) + (self.pending(pair, teacher) if teacher else []),
                    teacher,
                )
            for outcome in backend.outcomes():
                if outcome.status == "teacher":
                    architecture = to_train[outcome.run_id].student
                    known[architecture] = (Path(outcome.teacher_path), outcome.teacher_sha256)
                    for pair in request.pairs:
                        if pair.teacher == architecture:
                            self.submit(backend, self.pending(pair, known[architecture]), known[architecture])
                else:
                    getattr(self.summary, outcome.status).append(outcome.run_id)  # done, cached or failed
                    self.bar.update()
        if distributed.is_main():
            ratios.fill_time_ratios(self.out, self.summary.done + self.summary.cached)
        return self.summary
