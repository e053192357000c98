"""`kdbench explain`: train KDExplainer's HME (kdbench/models/hme.py) three ways and collect the runs.

`run_explain` trains the HME plain, with label smoothing and with KD (`VARIANTS`), each a normal cached
run record of the shared engine, over `seeds` seeds; the HME stores its routing analysis in every record
(`HME.analysis()`). kdbench/reporting/explain_report.py turns the result into the table, the verdict on the
paper's claim and the figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdbench.core import store
from kdbench.core.catalog import Pair
from kdbench.core.errors import ConfigError, shorten
from kdbench.core.spec import Recipe
from kdbench.data import prepare_data
from kdbench.execution import settings
from kdbench.execution.sweep import Sweep, SweepRequest
from kdbench.models import build_model
from kdbench.models.hme import HME
from kdbench.training import teachers

# (label, method, hyper-parameter overrides): the paper's three ways to train the HME. Label smoothing
# eps = 0.1 (Szegedy et al., CVPR 2016), the strength the paper compares KD against; KD with kdbench's
# `kd` defaults, which are the authors' (`ResNet50-LTB-ce.yml`: classify 0.1, kd 0.9, T = 4).
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("plain", "student", {}),
    ("label smoothing", "student", {"label_smoothing": 0.1}),
    ("KD", "kd", {}),
)

# The default (short) schedule, kdbench/execution/settings.py: hme_small (a quarter of the authors' width,
# kdbench/models/hme.py), 4 epochs (2 soft, 2 hard) on a 6,000-image training subset, 2 seeds.
DEFAULT_STUDENT = settings.SETTINGS["student"].get("default", "explain")
DEFAULT_EPOCHS = settings.SETTINGS["epochs"].get("default", "explain")
DEFAULT_SEEDS = settings.SETTINGS["seeds"].get("default", "explain")
DEFAULT_TRAIN_SUBSET = settings.SETTINGS["train_subset"].get("default", "explain")


def explain_recipe(epochs: int = DEFAULT_EPOCHS, train_subset: int | None = DEFAULT_TRAIN_SUBSET) -> Recipe:
    """The HME's recipe: the authors' stage-2 SGD (lr 0.05, momentum 0.9, weight decay 5e-4, batch 128,
    `train_LTB_s2.py` + `train_LTB_ce.yml`) with their lr schedule (no decay within a stage); the test
    split is evaluated after the last epoch only. Half the epochs route softly (stage 1), half hard."""
    return Recipe(
        epochs=epochs,
        batch_size=128,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        lr_decay_epochs=(),
        train_subset=train_subset,
        eval_every=epochs,
    )


@dataclass
@settings.with_settings(*settings.EXECUTION)
class ExplainRequest:
    """The HME analysis to run, and the settings of kdbench/execution/settings.py `EXECUTION` (device,
    jobs, out, ...) as fields after these, passed on to its sweeps as they are."""

    teacher: str  # a zoo name (trained with `teacher_recipe` and cached) or a checkpoint path
    dataset: str
    teacher_recipe: Recipe
    recipe: Recipe = field(default_factory=explain_recipe)
    student: str = DEFAULT_STUDENT
    seeds: int = DEFAULT_SEEDS
    teacher_arch: str | None = None  # architecture of a checkpoint that does not record it


def build_request(config: dict) -> ExplainRequest:
    """The ExplainRequest of a resolved `explain` configuration (kdbench/execution/config.py `resolve`):
    the HME's recipe from its epochs and training subset, the teacher's from the preset."""
    recipe = config["recipe"]
    return ExplainRequest(
        teacher=config["teacher"],
        dataset=config["dataset"],
        teacher_recipe=Recipe.from_dict(config["teacher_recipe"]),
        recipe=explain_recipe(recipe["epochs"], recipe.get("train_subset")),
        student=config["student"],
        seeds=config["seeds"],
        teacher_arch=config.get("teacher_arch"),
        **settings.request_values(config, ExplainRequest),
    )


@dataclass
class ExplainResult:
    dataset: str
    teacher: str  # architecture
    student: str
    classes: tuple[str, ...]
    records: dict[str, list[dict]]  # variant label -> finished run records, one per seed
    failed: list[str]  # "variant seed: error" of runs that failed


def resolve_teacher(
    request: ExplainRequest, progress: Callable[[str], None] | None
) -> tuple[str, Path, tuple]:
    """(architecture, checkpoint, class names): a given checkpoint is checked against the dataset; a
    name is found in the teacher cache or trained with `teacher_recipe` and cached."""
    arch, given = teachers.resolve_architecture(request.teacher, request.teacher_arch)
    info = prepare_data(request.dataset, request.data_root, request.recipe).info
    if given is not None:
        teachers.load_teacher(given, arch, info, torch.device("cpu"))  # another dataset / arch fails here
        return arch, given, info.classes
    path, _ = teachers.ensure_teacher(
        arch,
        request.dataset,
        request.teacher_recipe,
        request.out,
        data_root=request.data_root,
        device=request.device,
        threads=request.threads,
        env_extra={"concurrent_runs": request.jobs},
        **({"progress": progress} if progress else {}),
    )
    return arch, path, info.classes


def run_explain(request: ExplainRequest, progress: Callable[[str], None] | None = None) -> ExplainResult:
    """Train the HME plain, with label smoothing and with KD (each a normal, cached run record).

    The teacher is resolved first, so a teacher for another dataset or class count is refused before
    any HME trains. `force` re-runs the HME runs, never the teacher.
    """
    if not isinstance(build_model(request.student, num_classes=2), HME):  # its routing is what is explained
        raise ConfigError(
            f"--student {shorten(request.student)} is not an HME; give hme or hme_small (kdbench/models/hme.py)"
        )
    arch, teacher_path, classes = resolve_teacher(request, progress)

    def sweep_for(method: str, hp: dict) -> Sweep:
        return Sweep(
            SweepRequest(
                methods=[method],
                pairs=[Pair(arch, request.student)],
                dataset=request.dataset,
                recipe=request.recipe,
                teacher_recipe=request.teacher_recipe,
                seeds=list(range(request.seeds)),
                hp_overrides={method: hp},
                teacher_path=str(teacher_path),
                **settings.carried(request, SweepRequest),
            ),
            progress=progress,
        )

    records: dict[str, list[dict]] = {}
    failed = []
    for label, method, hp in VARIANTS:
        summary = sweep_for(method, hp).run()
        found = [store.find_record(request.out, run_id) for run_id in summary.done + summary.cached]
        records[label] = sorted(found, key=lambda record: record["spec"]["seed"])
        for run_id in summary.failed:
            record = store.find_record(request.out, run_id)
            failed.append(f"{label} seed {record['spec']['seed']}: {record['error']}")
    return ExplainResult(request.dataset, arch, request.student, classes, records, failed)
