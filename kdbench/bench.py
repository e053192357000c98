"""`kdbench bench`: speed ratios measured in one run on this machine (never asserted in tests).

- engine overhead: the shared Trainer's epoch vs a bare PyTorch loop (same model, data, steps);
- loader share: time to produce an epoch's augmented batches vs the bare training epoch;
- VAM training overhead: the same student with and without VAM;
- method step cost: each chosen method's epoch vs the student baseline's.
Each timing is the best of `repeats` to damp noise from other processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdbench.data import iterate_batches, load_dataset
from kdbench.engine import PreparedData, Trainer
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.spec import Recipe, RunSpec, VAMConfig


def _best_seconds(work: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def run_bench(
    dataset: str = "synthetic",
    student: str = "resnet8",
    teacher: str = "resnet20",
    methods: tuple[str, ...] = ("kd", "crd"),
    train_images: int = 2048,
    batch_size: int = 128,
    repeats: int = 3,
    data_root: str | None = None,
    out: str = "/tmp/kdbench-bench",
) -> list[dict]:
    """Return rows {measure, seconds, reference_seconds, ratio}."""
    info, train, test = load_dataset(dataset, data_root)
    train = train.take(torch.arange(min(train_images, len(train))))
    data = PreparedData(info, train, test, None)
    device = torch.device("cpu")
    recipe = Recipe(epochs=1, batch_size=batch_size, lr_decay_epochs=())
    teacher_model = build_model(teacher, num_classes=info.num_classes, in_chans=info.in_chans).eval()

    def trainer(method: str, vam: bool) -> Trainer:
        cls = method_class(method)
        spec = RunSpec(
            method=method,
            student=student,
            teacher=teacher if cls.needs_teacher else None,
            dataset=dataset,
            vam=VAMConfig() if vam else None,
            hp=cls.resolve_hp(),
            recipe=recipe,
        )
        return Trainer(
            spec,
            data,
            teacher=teacher_model if cls.needs_teacher else None,
            device=device,
            out=out,
            progress=lambda line: None,
        )

    def batches():
        return iterate_batches(
            train, info, batch_size, shuffle=True, augment=True, device=device, generator=torch.Generator()
        )

    bare_model = build_model(student, num_classes=info.num_classes, in_chans=info.in_chans)
    bare_optimizer = torch.optim.SGD(bare_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    prepared = list(batches())

    def bare_epoch():
        for images, labels, _ in prepared:
            loss = F.cross_entropy(bare_model(images), labels)
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()

    bare = _best_seconds(bare_epoch, repeats)
    rows = [{"measure": "bare PyTorch loop (reference)", "seconds": bare, "reference_seconds": bare}]
    loader = _best_seconds(lambda: sum(1 for _ in batches()), repeats)
    rows.append({"measure": "loader: augmented batches only", "seconds": loader, "reference_seconds": bare})
    baseline_trainer = trainer("student", vam=False)
    engine = _best_seconds(lambda: baseline_trainer.train_epoch(1), repeats)
    rows.append({"measure": "engine: student baseline epoch", "seconds": engine, "reference_seconds": bare})
    vam_trainer = trainer("student", vam=True)
    vam_seconds = _best_seconds(lambda: vam_trainer.train_epoch(1), repeats)
    rows.append({"measure": "VAM: student +VAM epoch", "seconds": vam_seconds, "reference_seconds": engine})
    for method in methods:
        method_trainer = trainer(method, vam=False)
        seconds = _best_seconds(lambda t=method_trainer: t.train_epoch(1), repeats)
        rows.append({"measure": f"method: {method} epoch", "seconds": seconds, "reference_seconds": engine})
    for row in rows:
        row["ratio"] = row["seconds"] / row["reference_seconds"]
    return rows
