"""Teachers: resolve, train, cache, load and verify (SHA-256), for `run`, `explain` and `teacher train`.

A teacher is either a checkpoint the user gives (`--teacher PATH`: kdbench's own, RepDistiller's and
mdistiller's `{"model": state_dict, ...}` (RepDistiller's final save with its argparse options too),
timm's `{"state_dict": ...}` or a bare state_dict, for any model, zoo or `timm:NAME`), or trained by
kdbench with a teacher recipe and cached in the store:

    teachers/<arch>-<dataset>-<run_id>.pt    {"model": state_dict, "kdbench": {arch, dataset, ...}}
    runs/<run_id>.json                       its record, with the checkpoint's SHA-256
    teachers/<sha256>.<dataset>.test.json    its test accuracy, measured once (`teacher_test_accuracy`;
                                             test<N>.json: on a recipe's test_subset of N)

A cached checkpoint whose bytes no longer match the SHA-256 in its record is refused. Runs name
their teacher by SHA-256 (`RunSpec.teacher_sha256`), never by path. Every checkpoint is read by
`store.read_checkpoint` (weights only: a file that would run code is refused; of other globals only
`store.FOREIGN_CHECKPOINT_GLOBALS`, argparse's Namespace, is allowed, and only here); weights holding NaN
or inf are refused where they are loaded (`load_model_weights`), whether given or cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdbench.core import distributed, store
from kdbench.core.environment import environment
from kdbench.core.errors import file_problem, shorten
from kdbench.core.progress import to_stderr
from kdbench.core.registries import canonical_model_name
from kdbench.core.spec import Recipe, RunSpec
from kdbench.core.store import CheckpointError
from kdbench.data import DatasetInfo, PreparedData, data_digest, fit_subsets, prepare_data, split_sizes
from kdbench.methods.base import BASELINE_METHOD, method_class
from kdbench.models import TIMM_PREFIX, build_model, list_models, load_weights, weights_mismatch
from kdbench.training.engine import train
from kdbench.training.evaluation import evaluate

Progress = Callable[[str], None]


def teacher_spec(
    architecture: str, dataset: str, recipe: Recipe, *, data_sha256: str | None = None
) -> RunSpec:
    """A teacher is trained like the student baseline: plain CE, with the teacher recipe, on the data
    whose identity is `data_sha256` (kdbench/data/__init__.py `data_digest`): a teacher of other data is
    another spec, so neither its cache file nor its record is reused."""
    return RunSpec(
        method=BASELINE_METHOD,
        student=canonical_model_name(architecture),
        dataset=dataset,
        hp=method_class(BASELINE_METHOD).resolve_hp(),
        recipe=recipe,
        kind="teacher",
        world_size=distributed.world_size(),
        data_sha256=data_sha256,
    )


def cache_path(out: Path, spec: RunSpec) -> Path:
    """The teacher's checkpoint, named by its run id (which covers the data's identity)."""
    return Path(out) / "teachers" / f"{spec.student}-{spec.dataset}-{spec.run_id}.pt"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path, what: str = "teacher checkpoint", flag: str = "--teacher") -> object:
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f"{what} {path} {problem}; pass an existing checkpoint file to {flag}")
    return store.read_checkpoint(path, what, allow=store.FOREIGN_CHECKPOINT_GLOBALS)


def _refuse_non_finite(state: dict, path: Path, what: str) -> None:
    """Weights holding NaN or inf are no trained model: every output they give is NaN (an accuracy
    of one class's share, which would be cached as the teacher's), so they are refused where read."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{what} {path} holds NaN or inf weights (first in {shorten(name)}); "
                "it comes from a run that diverged or a damaged file: retrain or re-export it"
            )


def recorded_architecture(path: Path) -> str | None:
    """The architecture a kdbench teacher checkpoint records (None for other checkpoints)."""
    checkpoint = _read(path)
    meta = checkpoint.get("kdbench", {}) if isinstance(checkpoint, dict) else {}
    return meta.get("arch")


def resolve_architecture(teacher: str, teacher_arch: str | None) -> tuple[str, Path | None]:
    """(architecture, checkpoint path or None) for a `--teacher NAME|PATH` argument."""
    teacher = canonical_model_name(teacher)
    if teacher in list_models() or teacher.startswith(TIMM_PREFIX):
        return teacher, None
    path = Path(teacher)
    if path.is_dir():
        raise CheckpointError(
            f"--teacher {teacher} is a directory, expected a checkpoint file or a model name"
        )
    if not path.is_file():
        raise CheckpointError(
            f"--teacher {shorten(teacher)} is neither a model name (kdbench list models) nor a checkpoint file"
        )
    arch = canonical_model_name(teacher_arch) if teacher_arch else recorded_architecture(path)
    if arch is None:
        raise CheckpointError(
            f"teacher checkpoint {path} does not record its architecture (not saved by kdbench); "
            "pass --teacher-arch NAME"
        )
    return arch, path


def _guess_architecture(state: dict, num_classes: int, in_chans: int) -> str | None:
    """Which zoo model has exactly this state_dict's keys and shapes (for the error message)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in list_models():
        candidate = build_model(name, num_classes=num_classes, in_chans=in_chans).state_dict()
        if {k: tuple(v.shape) for k, v in candidate.items()} == shapes:
            return name
    return None


def load_model_weights(
    path: Path,
    architecture: str,
    info: DatasetInfo,
    what: str = "teacher checkpoint",
    flag: str = "--teacher",
) -> nn.Module:
    """A `architecture` model for `info` holding the weights of the checkpoint at `path` (any layout
    `store.state_dict_of` knows), loaded strictly; a CheckpointError naming the file otherwise."""
    checkpoint = _read(path, what, flag)
    state = store.state_dict_of(checkpoint)
    if state is None:
        raise CheckpointError(
            f"{what} {path} holds no state_dict (expected {{'model': state_dict}}, {{'state_dict': ...}} "
            "or a bare state_dict)"
        )
    _refuse_non_finite(state, path, what)
    meta = checkpoint.get("kdbench", {})
    if meta and (meta.get("dataset"), meta.get("num_classes")) != (info.name, info.num_classes):
        raise CheckpointError(
            f"{what} {path} was trained on {meta.get('dataset')} ({meta.get('num_classes')} classes), "
            f"this run uses {info.name} ({info.num_classes} classes); train a teacher for {info.name}"
        )
    architecture = canonical_model_name(architecture)
    model = build_model(
        architecture, num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size
    )
    mismatch = weights_mismatch(model, state)
    if mismatch is None:
        return load_weights(model, state)
    found = meta.get("arch") or _guess_architecture(state, info.num_classes, info.in_chans)
    found_text = f"a '{found}'" if found else "an unknown architecture (or another dataset's class count)"
    raise CheckpointError(
        f"{what} {path} is {found_text}, not a '{architecture}' for {info.name} "
        f"({info.num_classes} classes, {info.in_chans} channels): {mismatch}; pass --pairs with its architecture"
    )


def load_teacher(path: Path, architecture: str, info: DatasetInfo, device: torch.device) -> nn.Module:
    """Load a teacher checkpoint strictly, checked against the dataset; frozen, in eval mode."""
    teacher = load_model_weights(path, architecture, info)
    return teacher.to(device).eval().requires_grad_(False)


def teacher_test_accuracy(
    out: Path,
    sha256: str,
    teacher: nn.Module,
    data: PreparedData,
    device: torch.device,
    test_subset: int | None = None,
) -> dict:
    """The teacher's accuracy on `data.test`, {"sha256", "test_top1", "test_top5"}: measured once per
    weights (`sha256`), dataset and test subset (the recipe's `test_subset` that `data` was prepared with:
    the student's test images, each subset cached apart from the whole split), then read from the store
    (`store.teacher_eval_path`) while the data is the same (`DatasetInfo.data_sha256`; another folder of
    the dataset is measured again)."""
    path = store.teacher_eval_path(out, sha256, data.info.name, test_subset)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("sha256") == sha256 and cached.get("data_sha256") == data.info.data_sha256:
                return {key: cached[key] for key in ("sha256", "test_top1", "test_top5")}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: measured again and rewritten
    accuracy = evaluate(teacher, data.test, data.info, device)
    result = {"sha256": sha256, "test_top1": accuracy["top1"], "test_top5": accuracy["top5"]}
    if distributed.is_main():
        written = {**result, "dataset": data.info.name, "data_sha256": data.info.data_sha256}
        store.atomic_write_bytes(path, (json.dumps(written) + "\n").encode())
    return result


def find_cached(out: Path, spec: RunSpec, progress: Progress = to_stderr) -> tuple[Path, str] | None:
    """(checkpoint, sha256) of the teacher cached for `spec`, verified; None when it must be trained."""
    path = cache_path(out, spec)
    record = store.find_record(out, spec.run_id)
    if not (record and record["status"] == "done" and path.exists()):
        return None
    if sha256_of(path) != record["checkpoint"]["sha256"]:
        raise CheckpointError(
            f"teacher checkpoint {path} does not match the SHA-256 in its record; delete it to retrain"
        )
    progress(f"[{spec.run_id}] teacher {spec.student} cached ({record['metrics']['last_top1']:.2f}%)")
    return path, record["checkpoint"]["sha256"]


def train_teacher(
    spec: RunSpec,
    data: PreparedData,
    out: Path,
    device: torch.device,
    env: dict,
    progress: Progress = to_stderr,
    progress_bar: bool | None = None,
) -> tuple[Path, str]:
    """Train the teacher of `spec` (kind "teacher"), save its checkpoint and its record."""
    progress(f"[{spec.run_id}] training teacher {spec.student} on {spec.dataset}")
    result, final_state = train(
        spec, data, teacher=None, device=device, out=out, progress=progress, progress_bar=progress_bar
    )
    info = data.info
    payload = {
        "model": final_state,
        "kdbench": {
            "arch": spec.student,
            "dataset": info.name,
            "num_classes": info.num_classes,
            "in_chans": info.in_chans,
            "run_id": spec.run_id,
        },
    }
    path = cache_path(out, spec)
    if distributed.is_main():
        store.atomic_torch_save(path, payload)
    distributed.barrier()  # the other ranks read the checkpoint rank 0 wrote
    digest = sha256_of(path)
    checkpoint = {"path": str(path.relative_to(out)), "sha256": digest}
    record = store.new_record(
        spec.to_dict(),
        spec.run_id,
        spec.kind,
        "done",
        env,
        result,
        checkpoint=checkpoint,
        data=split_sizes(data),
    )
    if distributed.is_main():
        store.write_record(out, record)
        store.checkpoint_path(out, spec.run_id).unlink(missing_ok=True)
    progress(f"[{spec.run_id}] teacher {spec.student}: done, top-1 {record['metrics']['last_top1']:.2f}%")
    return path, digest


def ensure_teacher(
    architecture: str,
    dataset: str,
    recipe: Recipe,
    out: Path,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    force: bool = False,
    threads: int | None = None,
    env_extra: dict | None = None,
    progress: Progress = to_stderr,
) -> tuple[Path, str]:
    """The cached teacher of this architecture, dataset (as found under `data_root`) and recipe, trained
    here first if there is none (or if `force`). A train_subset or test_subset of every image of its split
    or more is dropped from the recipe (kdbench/data/__init__.py `fit_subsets`, a warning when more)."""
    recipe, warnings = fit_subsets(dataset, data_root, recipe)
    for warning in warnings:
        progress(warning)
    spec = teacher_spec(architecture, dataset, recipe, data_sha256=data_digest(dataset, data_root, recipe))
    store.ensure_writable(out)
    with store.claim(out, spec.run_id):  # a second process waits here, then finds it cached
        found = None if force else find_cached(out, spec, progress)
        return found or _train_here(spec, Path(out), data_root, device, threads, env_extra or {}, progress)


def _train_here(
    spec: RunSpec,
    out: Path,
    data_root: str | None,
    device: str,
    threads: int | None,
    env_extra: dict,
    progress: Progress,
) -> tuple[Path, str]:
    if threads:
        torch.set_num_threads(threads)
    torch_device = torch.device(device)
    env = {**environment(torch_device), **env_extra}
    data = prepare_data(spec.dataset, data_root, spec.recipe)
    return train_teacher(spec, data, out, torch_device, env, progress)
