"""A sweep: a request (methods x pairs x seeds x VAM) planned into units of work and scheduled on
a back-end. Teachers are resolved first (given, cached or to be trained); runs that need no
teacher start beside a teacher being trained; finished records are skipped.

Before anything trains, the size of the grid is counted without building it (`count_runs`: methods x
hyper-parameter points x VAM configurations x seeds x pairs) and a sweep over `max_runs` (`--max-runs`,
default kdbench/execution/settings.py MAX_RUNS) is refused; the number of runs planned (and cached) is
printed.

A failing run (non-finite loss, a pair the method cannot serve) is recorded as failed with its
reason and the sweep goes on. Records are plain files, so sweeps run on several machines merge by
copying their `runs/` folders together.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from kdbench.core import distributed, store
from kdbench.core.catalog import Pair
from kdbench.core.errors import ConfigError
from kdbench.core.progress import bar, to_stderr
from kdbench.core.spec import Recipe, RunSpec, grid_points
from kdbench.data import DatasetInfo, fit_subsets, prepare_data
from kdbench.execution import plugins, settings
from kdbench.execution.backends import Backend, open_backend
from kdbench.execution.units import RunUnit, TeacherUnit, WorkerSettings
from kdbench.methods.base import BASELINE_METHOD, method_class
from kdbench.models import build_model, list_models
from kdbench.training import teachers
from kdbench.training.cohort import MAX_COHORT_MEMBERS, plan_cohorts
from kdbench.training.member import probe_shapes
from kdbench.wrappers.vam import VAMConfig


@dataclass
@settings.with_settings(*settings.SWEEP_REQUEST)
class SweepRequest:
    """What a sweep trains (the resolved forms of the settings `methods`, `pairs`, `recipe`, `seeds`,
    `vam`, `vam_config`, `hp` and `teacher`), and how: the settings of kdbench/execution/settings.py
    `SWEEP_REQUEST` as fields after these (device, jobs, cohort, max_runs, precision, out, ...)."""

    methods: list[str]
    pairs: list[Pair]
    dataset: str
    recipe: Recipe
    teacher_recipe: Recipe
    seeds: list[int] = field(default_factory=lambda: [0])
    vam_modes: list[bool] = field(default_factory=lambda: [False])
    vam_configs: list[VAMConfig] = field(default_factory=lambda: [VAMConfig()])  # a grid: each is a config
    # {wrapper name: config} every run applies beside VAM's variants (`wrappers`, `--wrapper`: a plugin's)
    wrappers: dict = field(default_factory=dict)
    student_lr: dict[str, float] = field(default_factory=dict)  # per-student lr (paper preset)
    # {method: {key: value or [values]}}: a list is a grid, each method trains its own keys' product
    hp_overrides: dict[str, dict] = field(default_factory=dict)
    teacher_path: str | None = None  # the `teacher` checkpoint (None: trained, or found in the store)
    student_init_sha256: str | None = None  # every student starts from these weights (--student-init)
    # the data's identity, set by `Sweep.run` (kdbench/data/__init__.py `data_digest`)
    data_sha256: str | None = None


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


def _vam_options(request: SweepRequest) -> list[VAMConfig | None]:
    """Each method's VAM variants: None (no VAM) and/or each VAM configuration."""
    return [None] * (False in request.vam_modes) + request.vam_configs * (True in request.vam_modes)


def count_runs(request: SweepRequest) -> int:
    """The runs the request asks for, counted without building them: per method, its hyper-parameter
    grid points x VAM variants x seeds x pairs (an upper bound: grid points that resolve alike, and the
    baseline of pairs sharing a student, train once)."""
    variants = len(_vam_options(request)) * len(request.seeds) * len(request.pairs)
    total = 0
    for method in request.methods:
        grid = request.hp_overrides.get(method, {})
        points = math.prod(len(v) if isinstance(v, (list, tuple)) else 1 for v in grid.values())
        total += points * variants
    return total


def check_size(request: SweepRequest) -> int:
    """The number of runs planned (`count_runs`), or a ConfigError when it is over `max_runs`; also
    checks the cohort, fuse and time_probe settings."""
    cohort = request.cohort
    if not isinstance(cohort, bool) and not (isinstance(cohort, int) and cohort >= 1):
        raise ConfigError(f"cohort takes on, off or a whole number >= 1 (runs per cohort), got {cohort!r}")
    for name in ("fuse", "time_probe"):
        if not isinstance(getattr(request, name), bool):
            raise ConfigError(
                f"{name} takes on or off (true or false in a sweep file), got {getattr(request, name)!r}"
            )
    if isinstance(request.max_runs, bool) or not isinstance(request.max_runs, int) or request.max_runs < 1:
        raise ConfigError(f"max_runs (--max-runs) must be a whole number >= 1, got {request.max_runs!r}")
    total = count_runs(request)
    if total > request.max_runs:
        raise ConfigError(
            f"this sweep plans up to {total:,} runs ({len(request.methods)} method(s) with their grids x "
            f"{len(_vam_options(request))} VAM variant(s) x {len(request.seeds)} seed(s) x "
            f"{len(request.pairs)} pair(s)), over the limit of {request.max_runs:,}; shrink the grid, or "
            f"allow it with --max-runs {total} (max_runs in a sweep file)"
        )
    return total


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
    specs: dict[RunSpec, None] = {}  # insertion-ordered; grid points that resolve alike train once
    # the baseline first: it needs no teacher, so it trains while the teacher does
    for method in sorted(request.methods, key=lambda m: m != BASELINE_METHOD):
        method_cls = method_class(method)
        if method_cls.needs_teacher != (teacher_sha is not None):
            continue
        teacher = pair.teacher if method_cls.needs_teacher else None
        # the code of the plugins that registered the method, the models or the dataset is part of the run
        plugin_sha256 = plugins.sha256_for(method, (pair.student, teacher), request.dataset, request.wrappers)
        points = hp_points(request, method)
        for point, vam, seed in itertools.product(points, _vam_options(request), request.seeds):
            spec = RunSpec(
                method=method,
                student=pair.student,
                dataset=request.dataset,
                teacher=teacher,
                teacher_sha256=teacher_sha,
                seed=seed,
                wrappers={**request.wrappers, "vam": vam} if vam else request.wrappers,
                hp=method_cls.resolve_hp({**pair.hp.get(method, {}), **point}),
                recipe=recipe,
                precision=request.precision,
                compile=request.compile,
                world_size=distributed.world_size(),
                student_init_sha256=request.student_init_sha256,
                data_sha256=request.data_sha256,
                plugin_sha256=plugin_sha256,
            )
            specs[spec] = None
    return list(specs)


def fit_to_data(request: SweepRequest, progress: Callable[[str], None]) -> SweepRequest:
    """The request with the data's identity (every spec's `data_sha256`) and without a train_subset or
    test_subset that asks for every image of its split or more (kdbench/data/__init__.py `fit_subsets`;
    warned once when more)."""
    recipes, warnings = {}, []
    for key in ("recipe", "teacher_recipe"):
        recipes[key], fitted = fit_subsets(request.dataset, request.data_root, getattr(request, key))
        for warning in fitted:
            if warning not in warnings:
                warnings.append(warning)
                progress(warning)
    info = prepare_data(request.dataset, request.data_root, recipes["recipe"]).info
    return replace(request, **recipes, data_sha256=info.data_sha256)


def check_pairs(request: SweepRequest, info: DatasetInfo) -> None:
    """Refuse, before anything trains, a pair with a model that cannot take the dataset's images: each
    model is built for them (kdbench/models, `image_size` too) and run on two blank ones."""
    needs_teacher = any(method_class(m).needs_teacher for m in request.methods)
    probed = set()
    for pair in request.pairs:
        for name in (pair.student, pair.teacher) if needs_teacher else (pair.student,):
            if name in probed:
                continue
            probed.add(name)
            with torch.random.fork_rng(devices=[]):  # the runs' seeds alone decide their initialisation
                model = build_model(
                    name, num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size
                )
                try:
                    probe_shapes(model, info, torch.device("cpu"))
                except (AssertionError, RuntimeError, ValueError) as error:  # the model's own shape checks
                    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise ConfigError(
                        f"pair {pair}: {name} cannot take the {info.in_chans}x{info.image_size[0]}x"
                        f"{info.image_size[1]} images of {request.dataset} ({reason[:200]}); choose another "
                        "model or --image-size"
                    ) from error


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
        """The request's back-end by name (kdbench/execution/backends/__init__.py)."""
        request = self.request
        worker = WorkerSettings(**settings.carried(request, WorkerSettings), concurrent_runs=request.jobs)
        return open_backend(
            request.backend,
            worker,
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
        return teachers.find_cached(self.out, self.teacher_spec(architecture), self.progress)

    def teacher_spec(self, architecture: str) -> RunSpec:
        """The spec of the teacher kdbench trains for `architecture` (a plugin's model: with its code)."""
        request = self.request
        spec = teachers.teacher_spec(
            architecture, request.dataset, request.teacher_recipe, data_sha256=request.data_sha256
        )
        return replace(spec, plugin_sha256=plugins.sha256_for(None, (architecture,), request.dataset))

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
        cohort = self.request.cohort
        largest = MAX_COHORT_MEMBERS if cohort is True else cohort
        fuse_seeds = bool(self.request.fuse)  # fused members fuse across the seeds of a cohort
        for members in plan_cohorts(
            specs, self.request.jobs, bool(cohort) and not alone, largest, across_seeds=fuse_seeds
        ):
            backend.submit(RunUnit(tuple(members), teacher_path))

    def announce(self, ready: int, to_train: dict[str, RunSpec]) -> None:
        """One line before anything trains: the runs planned, those cached among them, and the teachers
        to train first (the runs that wait for a teacher are counted with a stand-in for its SHA-256)."""
        training = {spec.student for spec in to_train.values()}
        waiting: set[str] = set()
        for pair in self.request.pairs:
            if pair.teacher in training:
                waiting.update(spec.run_id for spec in specs_for_pair(self.request, pair, "0" * 64))
        planned = ready + len(waiting) + len(self.summary.cached)
        teachers_line = f", {len(to_train)} teacher(s) to train first" if to_train else ""
        runs = "run" if planned == 1 else "runs"
        self.progress(f"kdbench: {planned} {runs} planned ({len(self.summary.cached)} cached){teachers_line}")

    def runs_bar(self) -> tqdm:
        """A bar of finished runs for a terminal when runs train in other processes (a pool, Ray,
        SLURM), whose epoch bars would garble each other; in this process the engine draws them."""
        elsewhere = self.request.jobs > 1 or self.request.backend != "local"
        shown = sys.stderr.isatty() if self.progress_bar is None else self.progress_bar
        return bar(total=0, desc="runs", unit="run", disable=not (shown and elsewhere))

    def teachers(self, info: DatasetInfo) -> tuple[dict[str, tuple[Path, str]], dict[str, RunSpec]]:
        """The pairs' teachers: ({architecture: (checkpoint, sha256)} given or cached, {teacher run id:
        its spec} to train first); none when no method needs one."""
        known: dict[str, tuple[Path, str]] = {}
        to_train: dict[str, RunSpec] = {}
        if not any(method_class(m).needs_teacher for m in self.request.methods):
            return known, to_train
        for pair in self.request.pairs:
            training = {spec.student for spec in to_train.values()}
            if pair.teacher not in known and pair.teacher not in training:
                found = self.known_teacher(pair.teacher, info)
                if found:
                    known[pair.teacher] = found
                else:
                    spec = self.teacher_spec(pair.teacher)
                    to_train[spec.run_id] = spec
        return known, to_train

    def save_plugin_sources(self) -> None:
        """The store keeps the code of the plugins the runs use (rerun loads it)."""
        request = self.request
        models = {model for pair in request.pairs for model in (pair.student, pair.teacher)}
        for method in request.methods:
            plugins.save_sources(
                self.out, plugins.sha256_for(method, models, request.dataset, request.wrappers)
            )

    def prepare(self) -> DatasetInfo:
        """The request checked, fitted to its data (a bad dataset fails here) and its pairs probed."""
        check_size(self.request)  # before any grid is built
        validate_names(self.request)
        store.ensure_writable(self.out)
        distributed.barrier()  # every rank plans from the same store: none has written yet
        if distributed.backend() is not None:  # under torchrun the ranks train in their own process,
            self.request = replace(self.request, jobs=1)  # stepping together through one run at a time
        self.request = request = fit_to_data(self.request, self.progress)
        info = prepare_data(request.dataset, request.data_root, request.recipe).info
        check_pairs(request, info)
        return info

    def run(self) -> SweepSummary:
        """Teachers first where they must be trained; runs needing no teacher start beside them."""
        known, to_train = self.teachers(self.prepare())
        if distributed.is_main():
            self.save_plugin_sources()
        ready = []  # (pair, its specs that can start now)
        for pair in self.request.pairs:  # with a known teacher, the baseline rides in its cohorts
            specs = self.pending(pair, None)
            if pair.teacher in known:
                specs += self.pending(pair, known[pair.teacher])
            ready.append((pair, specs))
        self.announce(sum(len(specs) for _, specs in ready), to_train)
        with self.backend() as backend, self.runs_bar() as self.bar:
            for spec in to_train.values():
                backend.submit(TeacherUnit(spec))
            for pair, specs in ready:
                self.submit(backend, specs, known.get(pair.teacher))
            for outcome in backend.outcomes():
                if outcome.status == "teacher":
                    architecture = to_train[outcome.run_id].student
                    known[architecture] = (Path(outcome.teacher_path), outcome.teacher_sha256)
                    for pair in self.request.pairs:
                        if pair.teacher == architecture:
                            self.submit(backend, self.pending(pair, known[architecture]), known[architecture])
                else:
                    getattr(self.summary, outcome.status).append(outcome.run_id)  # done, cached or failed
                    self.bar.update()
        return self.summary
