"""Run a grid of specs: resolve teachers (train once and cache, or load a checkpoint), skip
cache hits, train the rest with the engine, write one record per run.

A failing run (non-finite loss, a pair the method cannot serve) is recorded as failed with
its reason and the sweep goes on. Records are plain files, so sweeps run on several
machines merge by copying their `runs/` folders together.
"""

from __future__ import annotations

import hashlib
import platform
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


class Sweep:
    def __init__(self, request: SweepRequest, progress: Callable[[str], None] | None = None):
        self.request = request
        self.out = Path(request.out)
        self.device = torch.device(request.device)
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.environment = environment(self.device)
        self._data: dict[Recipe, PreparedData] = {}

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

    def resolve_teacher(self, architecture: str, data: PreparedData) -> tuple[nn.Module, str]:
        """Return (teacher, sha256 of its checkpoint): the given one, or the cached / newly trained one."""
        if self.request.teacher_path:
            path = Path(self.request.teacher_path)
            teacher = load_teacher(path, architecture, data, self.device)
            return teacher, sha256_of(path)
        spec = self.teacher_spec(architecture)
        path = self.out / "teachers" / f"{architecture}-{spec.dataset}-{spec.run_id}.pt"
        record = store.find_record(self.out, spec.run_id)
        if record and record["status"] == "done" and path.exists() and not self.request.force:
            if sha256_of(path) != record["checkpoint"]["sha256"]:
                raise CheckpointError(
                    f"teacher checkpoint {path} does not match the SHA-256 in its record; delete it to retrain"
                )
            self.progress(
                f"[{spec.run_id}] teacher {architecture} cached ({record['metrics']['last_top1']:.2f}%)"
            )
            return load_teacher(path, architecture, data, self.device), record["checkpoint"]["sha256"]
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
        store.atomic_torch_save(path, payload)
        digest = sha256_of(path)
        self._write(
            spec, "done", result, checkpoint={"path": str(path.relative_to(self.out)), "sha256": digest}
        )
        return load_teacher(path, architecture, data, self.device), digest

    # -- runs ----------------------------------------------------------------------------------
    def _train(self, spec: RunSpec, data: PreparedData, teacher: nn.Module | None) -> tuple[dict, dict]:
        started = time.perf_counter()
        trainer = Trainer(
            spec, data, teacher=teacher, device=self.device, out=self.out, progress=self.progress
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
        if status == "done" and spec.kind == "distill":
            record["overhead"]["time_ratio_vs_student"] = self._time_ratio(spec, record)
        store.write_record(self.out, record)
        store.checkpoint_path(self.out, spec.run_id).unlink(missing_ok=True)
        return record

    def _time_ratio(self, spec: RunSpec, record: dict) -> float | None:
        """Epoch time relative to the plain student baseline of the same recipe, seed and machine."""
        baseline_spec = replace(
            spec,
            method=BASELINE_METHOD,
            teacher=None,
            teacher_sha256=None,
            vam=None,
            hp=method_class(BASELINE_METHOD).resolve_hp(),
        )
        baseline = (
            record
            if baseline_spec.run_id == spec.run_id
            else store.find_record(self.out, baseline_spec.run_id)
        )
        if (
            not baseline
            or baseline["status"] != "done"
            or baseline["environment"]["device"] != self.environment["device"]
        ):
            return None
        return record["overhead"]["epoch_seconds"] / baseline["overhead"]["epoch_seconds"]

    def specs_for_pair(self, pair: Pair, teacher_sha: str | None) -> list[RunSpec]:
        request = self.request
        recipe = request.recipe
        if pair.student in request.student_lr:
            recipe = replace(recipe, lr=request.student_lr[pair.student])
        specs = []
        # the baseline first: every other run's time ratio is measured against it
        methods = sorted(request.methods, key=lambda m: m != BASELINE_METHOD)
        for method in methods:
            method_cls: type[Method] = method_class(method)
            for vam_on in request.vam_modes:
                for seed in request.seeds:
                    specs.append(
                        RunSpec(
                            method=method,
                            student=pair.student,
                            dataset=request.dataset,
                            teacher=pair.teacher if method_cls.needs_teacher else None,
                            teacher_sha256=teacher_sha if method_cls.needs_teacher else None,
                            seed=seed,
                            vam=request.vam_config if vam_on else None,
                            hp=method_cls.resolve_hp(
                                {**pair.hp.get(method, {}), **request.hp_overrides.get(method, {})}
                            ),
                            recipe=recipe,
                        )
                    )
        return specs

    def run(self) -> SweepSummary:
        request = self.request
        validate_names(request)
        summary = SweepSummary()
        data = self.data_for(request.recipe)
        needs_teacher = any(method_class(m).needs_teacher for m in request.methods)
        for pair in request.pairs:
            teacher, teacher_sha = (None, None)
            if needs_teacher:
                teacher, teacher_sha = self.resolve_teacher(pair.teacher, data)
            for spec in self.specs_for_pair(pair, teacher_sha):
                existing = store.find_record(self.out, spec.run_id)
                if existing and existing["status"] == "done" and not request.force:
                    summary.cached.append(spec.run_id)
                    self.progress(
                        f"[{spec.run_id}] {spec.label}: cached ({existing['metrics']['last_top1']:.2f}%)"
                    )
                    continue
                try:
                    result, final_state = self._train(
                        spec, self.data_for(spec.recipe), teacher if spec.teacher else None
                    )
                except (NonFiniteLossError, PairNotSupportedError) as err:
                    self._write(spec, "failed", error=str(err))
                    summary.failed.append(spec.run_id)
                    self.progress(f"[{spec.run_id}] {spec.label}: FAILED: {err}")
                    continue
                # RepDistiller's checkpoint format
                store.atomic_torch_save(self.out / "models" / f"{spec.run_id}.pt", {"model": final_state})
                record = self._write(spec, "done", result)
                summary.done.append(spec.run_id)
                self.progress(
                    f"[{spec.run_id}] {spec.label}: done, top-1 {record['metrics']['last_top1']:.2f}%"
                )
        return summary
