"""The one training loop: the student baseline, every method and teacher training use it.

A lean loop of kdbench's own rather than mmengine's Runner: a KD step needs a frozen teacher
forward, method-declared feature taps and method-owned trainable modules, which the Runner
would need a custom model wrapper and hooks for, and its per-iteration hook dispatch and
logging cost more than the whole step of a resnet8 on 2 CPU cores (measured by
`kdbench bench`). The loop knows no method by name: it asks the method which features it
reads, which parameters it trains, whether it has an init stage, and sums the loss terms
it returns.

Hooks: per-epoch evaluation, atomic checkpoint after every epoch and resume from it,
progress lines, timing, and `set_epoch(epoch, num_epochs)` on any student module or method
that defines it (VAM temperature annealing, DKD warm-up, HME routing schedules).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kdbench import vam as vam_module
from kdbench.data import (
    MEMORY_FORMAT,
    DatasetInfo,
    ImageData,
    iterate_batches,
    load_dataset,
    split_validation,
    stratified_subset,
)
from kdbench.features import Features, FeatureShapes
from kdbench.measure import inference_flops, measure_train_step, parameter_count
from kdbench.methods.base import Method, MethodContext, method_class
from kdbench.models import build_model
from kdbench.spec import Recipe, RunSpec
from kdbench.store import atomic_torch_save, checkpoint_path

EVAL_BATCH_SIZE = 512


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, wrong architecture, wrong dataset)."""


@dataclass
class PreparedData:
    info: DatasetInfo
    train: ImageData
    test: ImageData
    val: ImageData | None


def prepare_data(dataset: str, data_root: str | None, recipe: Recipe) -> PreparedData:
    """Load a dataset once (decoded tensors in memory) and apply the recipe's subset / val split.

    The subset and the split use a fixed seed (0), so every run and seed of a sweep sees the
    same images; the run seed varies initialisation and batch order only.
    """
    info, train, test = load_dataset(dataset, data_root)
    if recipe.train_subset and recipe.train_subset < len(train.labels):
        train = stratified_subset(train, recipe.train_subset, seed=0)
    val = None
    if recipe.val_split:
        train, val = split_validation(train, recipe.val_split, seed=0)
    return PreparedData(info, train, test, val)


def _set_epoch_hooks(modules: list[nn.Module], epoch: int, num_epochs: int) -> None:
    for root in modules:
        for module in root.modules():
            hook = getattr(module, "set_epoch", None)
            if callable(hook):
                hook(epoch, num_epochs)


def _forward(model: nn.Module, images: torch.Tensor, want_features: bool) -> Features:
    if want_features:
        return model(images, features=True)
    return Features(logits=model(images), pooled=None)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, info: DatasetInfo, device: torch.device) -> dict:
    """Top-1 / top-5 accuracy (%) on a whole split, eval mode."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    topk = min(5, info.num_classes)
    for images, labels, _ in iterate_batches(
        data, info, EVAL_BATCH_SIZE, shuffle=False, augment=False, device=device, generator=None
    ):
        logits = model(images)
        top = logits.topk(topk, dim=1).indices
        hits = top.eq(labels[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    model.train(was_training)
    count = len(data.labels)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count}


def probe_shapes(model: nn.Module, info: DatasetInfo, device: torch.device) -> FeatureShapes:
    was_training = model.training
    model.eval()
    example = torch.zeros(2, info.in_chans, *info.image_size, device=device)
    with torch.no_grad():
        shapes = FeatureShapes.of(model(example, features=True))
    model.train(was_training)
    return shapes


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated / foreign file
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({err}); delete it to start that run afresh"
        ) from err


class Trainer:
    """Trains one RunSpec. Build it, then call `run()`; it returns the record's measured part."""

    def __init__(
        self,
        spec: RunSpec,
        data: PreparedData,
        *,
        teacher: nn.Module | None,
        device: torch.device,
        out: Path,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.spec, self.data, self.device, self.out = spec, data, device, Path(out)
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        # a live bar for people at a terminal (None: when stderr is one); logs get per-epoch lines
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        info = data.info
        torch.manual_seed(spec.seed)
        self.student = build_model(spec.student, num_classes=info.num_classes, in_chans=info.in_chans).to(
            device
        )
        self.vam_layers = vam_module.wrap(self.student, spec.vam) if spec.vam else []
        self.student.to(memory_format=MEMORY_FORMAT)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False).to(memory_format=MEMORY_FORMAT)
        method_cls: type[Method] = method_class(spec.method)
        student_shapes = probe_shapes(self.student, info, device)
        teacher_shapes = probe_shapes(teacher, info, device) if teacher is not None else None
        method_cls.check_pair(student_shapes, teacher_shapes)  # refuse before any training
        context = MethodContext(
            student_shapes=student_shapes,
            teacher_shapes=teacher_shapes,
            num_classes=info.num_classes,
            num_train=len(data.train.labels),
            train_labels=data.train.labels.to(device),
            num_epochs=spec.recipe.epochs,
        )
        self.method = method_cls(dict(spec.hp), context).to(device, memory_format=MEMORY_FORMAT)
        self.student_wants_features = bool(method_cls.student_features)
        self.teacher_wants_features = bool(method_cls.teacher_features)

        attention_ids = {id(p) for p in vam_module.attention_parameters(self.student)}
        recipe = spec.recipe
        decayed = [p for p in self.student.parameters() if id(p) not in attention_ids]
        decayed += [p for p in self.method.parameters() if p.requires_grad]
        groups = [{"params": decayed}]
        if attention_ids:  # attention logits are not weights: no weight decay pulls them to uniform
            groups.append(
                {
                    "params": vam_module.attention_parameters(self.student),
                    "weight_decay": 0.0,
                    "lr": recipe.lr * spec.vam.lr_scale,
                }
            )
        self.optimizer = torch.optim.SGD(
            groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(recipe.lr_decay_epochs), gamma=recipe.lr_decay_rate
        )
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.history: list[dict] = []
        self.start_epoch = 1
        self.init_done = False
        self.train_seconds = 0.0

    # -- losses -----------------------------------------------------------------------------
    def _loss_terms(self, images, labels, indices, student=None, method=None) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (on copies of student / method when given)."""
        student = student or self.student
        method = method or self.method
        student_out = _forward(student, images, self.student_wants_features)
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = _forward(self.teacher, images, self.teacher_wants_features)
        terms = method.losses(student_out, teacher_out, labels, indices)
        if self.vam_layers:
            terms["vam_entropy"] = vam_module.entropy_loss(student)
        return terms

    # -- checkpoint / resume ---------------------------------------------------------------
    def _checkpoint_file(self) -> Path:
        return checkpoint_path(self.out, self.spec.run_id)

    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "run_id": self.spec.run_id,
            "epoch": epoch,
            "init_done": self.init_done,
            "student": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "torch_rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
        }
        atomic_torch_save(self._checkpoint_file(), state)

    def try_resume(self) -> bool:
        path = self._checkpoint_file()
        if not path.exists():
            return False
        state = _load_checkpoint(path)
        if state.get("run_id") != self.spec.run_id:
            raise CheckpointError(f"checkpoint {path} belongs to another run; delete it")
        self.student.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.train_seconds = state["train_seconds"]
        self.init_done = state["init_done"]
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        self.start_epoch = state["epoch"] + 1
        self.progress(f"[{self.spec.run_id}] resuming {self.spec.label} after epoch {state['epoch']}")
        return True

    # -- stages ------------------------------------------------------------------------------
    def _batches(self):
        return iterate_batches(
            self.data.train,
            self.data.info,
            self.spec.recipe.batch_size,
            shuffle=True,
            augment=True,
            device=self.device,
            generator=self.generator,
        )

    def run_init_stage(self) -> None:
        """The method's declared pre-training stage (AB / FT / FSP style), if any."""
        stage = self.method.init_stage()
        if stage is None or self.init_done:
            self.init_done = True
            return
        parameters = list(stage.parameters)
        if getattr(self.method, "init_trains_student", False):
            parameters += [p for p in self.student.parameters()]
        recipe = self.spec.recipe
        optimizer = torch.optim.SGD(
            parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        self.student.train()
        for epoch in range(1, stage.epochs + 1):
            total, steps = 0.0, 0
            for images, _, _ in self._batches():
                student_out = self.student(images, features=True)
                with torch.no_grad():
                    teacher_out = self.teacher(images, features=True)
                loss = sum(stage.loss(student_out, teacher_out).values())
                self._check_finite(loss, f"init stage epoch {epoch}", steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
            self.progress(f"[{self.spec.run_id}] init stage {epoch}/{stage.epochs} loss {total / steps:.4f}")
        self.init_done = True

    def _check_finite(self, loss: torch.Tensor, where: str, step: int, terms: dict | None = None) -> None:
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (terms or {}).items())
            raise NonFiniteLossError(
                f"non-finite loss at {where} step {step}" + (f" ({detail})" if detail else "")
            )

    def train_epoch(self, epoch: int) -> dict:
        self.student.train()
        self.method.train()
        _set_epoch_hooks([self.student, self.method], epoch, self.spec.recipe.epochs)
        sums: dict[str, float] = {}
        loss_sum, steps, images_seen = 0.0, 0, 0
        start = time.perf_counter()
        batches = self._batches()
        if self.progress_bar:
            steps_per_epoch = math.ceil(len(self.data.train) / self.spec.recipe.batch_size)
            batches = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="step")
        for images, labels, indices in batches:
            terms = self._loss_terms(images, labels, indices)
            loss = sum(terms.values())
            self._check_finite(loss, f"epoch {epoch}", steps, terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += float(loss.detach())
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            steps += 1
            images_seen += len(labels)
        seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {
            "epoch": epoch,
            "train_loss": loss_sum / steps,
            "loss_terms": {name: value / steps for name, value in sums.items()},
            "epoch_seconds": seconds,
            "images": images_seen,
            "lr": lr,
        }

    def measure_costs(self) -> dict:
        """One counted training step on copies (no state of the real run changes) + deploy cost."""
        info = self.data.info
        rng_state = torch.get_rng_state()
        student, method = copy.deepcopy(self.student), copy.deepcopy(self.method)
        measure_generator = torch.Generator().manual_seed(0)
        images, labels, indices = next(
            iter(
                iterate_batches(
                    self.data.train,
                    info,
                    self.spec.recipe.batch_size,
                    shuffle=True,
                    augment=True,
                    device=self.device,
                    generator=measure_generator,
                )
            )
        )
        trained = [p for p in student.parameters()] + [p for p in method.parameters() if p.requires_grad]

        def step():
            return sum(self._loss_terms(images, labels, indices, student, method).values())

        frozen = [self.teacher] if self.teacher is not None else []
        costs = measure_train_step(step, trained, frozen, len(labels), self.device)
        torch.set_rng_state(rng_state)
        example = torch.zeros(1, info.in_chans, *info.image_size, device=self.device)
        costs["teacher_flops_per_image"] = inference_flops(self.teacher, example) if self.teacher else 0
        costs["extra_trainable_params"] = parameter_count(method, trainable_only=True) + sum(
            p.numel() for p in vam_module.attention_parameters(self.student)
        )
        return costs

    def deployed_student(self) -> tuple[nn.Module, float | None]:
        """The student as deployed: VAM folded into plain convs. Returns it and the fold's max error."""
        if not self.vam_layers:
            return self.student, None
        info = self.data.info
        plain = build_model(self.spec.student, num_classes=info.num_classes, in_chans=info.in_chans)
        folded = vam_module.fold(self.student, plain.to(self.device)).eval()
        self.student.eval()
        example, _, _ = next(
            iter(
                iterate_batches(
                    self.data.test,
                    self.data.info,
                    64,
                    shuffle=False,
                    augment=False,
                    device=self.device,
                    generator=None,
                )
            )
        )
        with torch.no_grad():
            fold_error = float((folded(example) - self.student(example)).abs().max())
        return folded, fold_error

    def run(self) -> dict:
        """Train to the end (resuming if a checkpoint exists) and return the measured results."""
        recipe = self.spec.recipe
        self.try_resume()
        costs = self.measure_costs()
        if not self.init_done:
            self.run_init_stage()
            self.save_checkpoint(0)
        for epoch in range(self.start_epoch, recipe.epochs + 1):
            entry = self.train_epoch(epoch)
            evaluated = ""
            if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
                test = evaluate(self.student, self.data.test, self.data.info, self.device)
                entry.update(test_top1=test["top1"], test_top5=test["top5"])
                evaluated = f" test top-1 {test['top1']:.2f}%"
                if self.data.val is not None:
                    entry["val_top1"] = evaluate(self.student, self.data.val, self.data.info, self.device)[
                        "top1"
                    ]
            self.history.append(entry)
            self.train_seconds += entry["epoch_seconds"]
            self.save_checkpoint(epoch)
            self.progress(
                f"[{self.spec.run_id}] {self.spec.label} epoch {epoch}/{recipe.epochs} "
                f"loss {entry['train_loss']:.4f}{evaluated} "
                f"({entry['epoch_seconds']:.1f}s, {entry['images'] / entry['epoch_seconds']:.0f} img/s)"
            )
        deployed, fold_error = self.deployed_student()
        example = torch.zeros(1, self.data.info.in_chans, *self.data.info.image_size, device=self.device)
        best = max((h for h in self.history if "test_top1" in h), key=lambda h: h["test_top1"])
        last = self.history[-1]
        images = sum(h["images"] for h in self.history)
        return {
            "history": self.history,
            "metrics": {
                "last_top1": last["test_top1"],
                "last_top5": last["test_top5"],
                "best_top1": best["test_top1"],
                "best_top5": best["test_top5"],
                "best_epoch": best["epoch"],
            },
            "throughput_img_s": images / self.train_seconds if self.train_seconds else math.nan,
            "overhead": {
                **costs,
                "epoch_seconds": self.train_seconds / len(self.history),
                "time_ratio_vs_student": None,
                "deploy_params": parameter_count(deployed),
                "deploy_flops_per_image": inference_flops(deployed, example),
                "vam_fold_max_abs_error": fold_error,
            },
            "vam": vam_module.entropies(self.student) if self.vam_layers else None,
            # a student model's own JSON-able findings, where it defines `analysis()`
            "analysis": self.student.analysis() if hasattr(self.student, "analysis") else None,
            "final_state": deployed.state_dict(),
        }
