"""The one training loop: the student baseline, every method and teacher training use it.

A lean loop of kdbench's own rather than mmengine's Runner: a KD step needs a frozen teacher
forward, method-declared feature taps and method-owned trainable modules, which the Runner
would need a custom model wrapper and hooks for, and its per-iteration hook dispatch and
logging weigh on the small models' steps (`kdbench bench` times this loop against a bare
one). The loop knows no method and no wrapper by name: it asks the method which features it
reads (and hands it only those), which parameters it trains, whether it has an init stage
(`InitStage`), which extra augmented views of a batch it reads (`extra_views`: drawn by
kdbench/data/__init__.py's `augment_views` from a generator of the run's own, the student and the teacher
run on each), which model is evaluated and deployed (`deploy`), and sums the loss terms it
returns; student wrappers (VAM) go through the `StudentWrapper` interface of
kdbench/wrappers/base.py.

The model protocol (kdbench/models/__init__.py): `model(x)` -> logits, `model(x, features=True)`
-> `Features` (kdbench/core/features.py), `model.stage_modules()` -> the stages, in order.

Hooks: per-epoch evaluation, atomic checkpoint after every epoch and resume from it,
progress lines, timing, and `set_epoch(epoch, num_epochs)` on any student module or method
that defines it (VAM temperature annealing, DKD warm-up, HME routing schedules), and on
every wrapper.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdbench.core import distributed
from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.progress import bar as progress_bar
from kdbench.core.progress import to_stderr
from kdbench.core.registries import WRAPPERS
from kdbench.core.spec import RunSpec
from kdbench.core.store import (
    CheckpointError,
    TrainResult,
    atomic_torch_save,
    checkpoint_path,
    read_checkpoint,
    read_student_init,
)
from kdbench.data import (
    MEMORY_FORMAT,
    SUBSET_SEED,
    DatasetInfo,
    ImageData,
    PreparedData,
    augment_views,
    iterate_batches,
    view_generator,
)
from kdbench.methods.base import Method, MethodContext, method_class
from kdbench.models import build_model, load_weights
from kdbench.training.measure import inference_flops, measure_train_step, parameter_count
from kdbench.training.precision import Precision, backward_step
from kdbench.wrappers import build_wrappers

EVAL_BATCH_SIZE = 512


class NonFiniteLossError(KdbenchError, RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed."""


# Each random source of a run -> the stream it draws from (docs/DESIGN.md, "Protocol"). The global
# stream is seeded once, then drawn by the sources in this order: construction draws the student's,
# the wrappers' and the method's initial weights; training draws the method's sampling and dropout.
RANDOM_SOURCES = {
    "student_init": "global",
    "wrapper_init": "global",
    "method_init": "global",
    "method_sampling": "global",
    "dropout": "global",
    "batch_order": "batches",
    "augmentation": "batches",
    "extra_views": "views",
    "data_subset": "data",
    "validation_split": "data",
}


def stream_seeds(seed: int) -> dict[str, int]:
    """The seed of each random stream of a run whose spec seed is `seed`: the Trainer seeds its
    streams from this table and the record's `seeds` is read from it (`source_seeds`)."""
    return {
        "global": seed,  # torch's global generator (the CPU's and every CUDA device's)
        "batches": seed,  # the run's generator, shared by a cohort's members
        "views": view_generator(seed).initial_seed(),  # derived from the seed, apart from the batches
        "data": SUBSET_SEED,  # fixed: every seed trains on the same images
    }


def source_seeds(seed: int, extra_views: bool) -> dict[str, int | None]:
    """The record's `seeds`: each of `RANDOM_SOURCES` -> the seed of its stream (extra views: None
    for a method that reads none)."""
    streams = stream_seeds(seed)
    seeds = {source: streams[stream] for source, stream in RANDOM_SOURCES.items()}
    return {**seeds, "extra_views": seeds["extra_views"] if extra_views else None}


def _set_epoch_hooks(modules: list[nn.Module], epoch: int, num_epochs: int) -> None:
    for root in modules:
        for module in root.modules():
            hook = getattr(module, "set_epoch", None)
            if callable(hook):
                hook(epoch, num_epochs)


def _forward(model: nn.Module, images: torch.Tensor, fields: tuple[str, ...]) -> Features:
    """Logits, plus the declared `Features` fields (a forward without features when none are)."""
    if fields:
        return model(images, features=True).only(fields)
    return Features(logits=model(images), pooled=None)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    info: DatasetInfo,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict:
    """Top-1 / top-5 accuracy (%) on a whole split, eval mode (under the run's autocast)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    topk = min(5, info.num_classes)
    for images, labels, _ in iterate_batches(
        data, info, EVAL_BATCH_SIZE, shuffle=False, augment=False, device=device, generator=None
    ):
        with autocast():
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


@dataclass
class EpochMeter:
    """Sums over an epoch's steps."""

    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    term_sums: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, loss: float, terms: dict[str, float], images: int) -> None:
        self.loss_sum += loss
        for name, value in terms.items():
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value
        self.steps += 1
        self.images += images


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
        on_epoch: Callable[[RunSpec, dict], None] | None = None,
    ):
        self.spec, self.data, self.device, self.out = spec, data, device, Path(out)
        self.progress = progress or to_stderr
        self.on_epoch = on_epoch  # each finished epoch's history entry (trackers, kdbench/core/trackers.py)
        # a live bar for people at a terminal (None: when stderr is one); logs get per-epoch lines
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        info = data.info
        streams = stream_seeds(spec.seed)
        torch.manual_seed(streams["global"])
        self.student = build_model(
            spec.student, num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size
        ).to(device)
        if spec.student_init_sha256:  # --student-init: the run starts from these weights (units.py put them)
            load_weights(self.student, read_student_init(self.out, spec.student_init_sha256))
        self.wrappers = build_wrappers(spec)
        for wrapper in self.wrappers:
            wrapper.wrap(self.student)
        self.student.to(memory_format=MEMORY_FORMAT)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False).to(memory_format=MEMORY_FORMAT)
        self.precision = Precision(spec.precision, device)
        self.scaler = self.precision.scaler()
        # what the training steps call: compiled wrappers where asked (the modules stay as they are)
        self.train_student = torch.compile(self.student) if spec.compile else self.student
        self.train_teacher = torch.compile(teacher) if spec.compile and teacher is not None else teacher
        method_cls: type[Method] = method_class(spec.method)
        if distributed.world_size() > 1 and not method_cls.distributed_ok:  # the sweep refuses it first
            raise ConfigError(f"{spec.method} cannot train on {distributed.world_size()} processes")
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
            # this process's part of a full batch (`distributed.shard` slices every world-th sample)
            batch_size=len(range(distributed.rank(), spec.recipe.batch_size, distributed.world_size())),
            image_shape=(info.in_chans, *info.image_size),
            teacher=teacher,
            student=self.student,
        )
        self.method = method_cls(dict(spec.hp), context).to(device, memory_format=MEMORY_FORMAT)
        self.student_features = method_cls.student_features
        self.teacher_features = method_cls.teacher_features
        self.extra_views = method_cls.extra_views
        # extra views draw from a stream of their own: the batches stay those of every other run
        self.view_generator = torch.Generator().manual_seed(streams["views"]) if self.extra_views else None
        self.seeds = source_seeds(spec.seed, bool(self.extra_views))

        recipe = spec.recipe
        wrapper_groups = [g for w in self.wrappers for g in w.param_groups(self.student, recipe.lr)]
        grouped = {id(p) for group in wrapper_groups for p in group["params"]}
        student_params = [p for p in self.student.parameters() if id(p) not in grouped]
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        groups = [{"params": student_params + method_params}, *wrapper_groups]
        self.optimizer = torch.optim.SGD(
            groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(recipe.lr_decay_epochs), gamma=recipe.lr_decay_rate
        )
        self.generator = torch.Generator().manual_seed(streams["batches"])
        self.history: list[dict] = []
        self.start_epoch = 1
        self.init_done = False
        self.train_seconds = 0.0
        self.costs: dict = {}  # measured by `prepare`

    # -- losses -----------------------------------------------------------------------------
    def _teacher_forward(self, images) -> Features | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            return _forward(self.train_teacher, images, self.teacher_features)

    def _views(self, images, indices, student, generator) -> dict[str, tuple[Features, Features | None]]:
        """The method's extra views of this batch: (student, teacher) outputs for each."""
        views = augment_views(
            self.data.train,
            self.data.info,
            indices,
            self.extra_views,
            generator=generator,
            device=images.device,
        )
        return {
            name: (_forward(student, view, self.student_features), self._teacher_forward(view))
            for name, view in views.items()
        }

    def _loss_terms(
        self,
        images,
        labels,
        indices,
        student=None,
        method=None,
        teacher_out: Features | None = None,
        view_generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (on copies of student / method when given; with the
        teacher's features when a cohort computed them already; extra views drawn from
        `view_generator`, the run's own by default)."""
        student = student or self.train_student
        method = method or self.method
        student_out = _forward(student, images, self.student_features)
        if self.teacher is None:
            teacher_out = None
        elif teacher_out is None:
            teacher_out = self._teacher_forward(images)
        else:
            teacher_out = teacher_out.only(self.teacher_features)
        extra = {}
        if self.extra_views:  # only a method that declares views receives them
            extra["views"] = self._views(images, indices, student, view_generator or self.view_generator)
        terms = method.losses(student_out, teacher_out, labels, indices, **extra)
        for wrapper in self.wrappers:
            terms.update(wrapper.loss_terms(student))
        return terms

    # -- checkpoint / resume ---------------------------------------------------------------
    def _checkpoint_file(self) -> Path:
        return checkpoint_path(self.out, self.spec.run_id)

    def _average_gradients(self) -> None:
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        distributed.average_gradients(trained)

    def save_checkpoint(self, epoch: int) -> None:
        if not distributed.is_main():  # every rank holds the same state; rank 0 writes it
            return
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
            "view_generator": self.view_generator.get_state() if self.view_generator else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        atomic_torch_save(self._checkpoint_file(), state)

    def try_resume(self) -> bool:
        path = self._checkpoint_file()
        if not path.exists():
            return False
        state = read_checkpoint(path, "checkpoint", "delete it to start that run afresh")
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
        if self.view_generator is not None and state.get("view_generator") is not None:
            self.view_generator.set_state(state["view_generator"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1
        self.progress(f"[{self.spec.run_id}] resuming {self.spec.label} after epoch {state['epoch']}")
        return True

    # -- stages ------------------------------------------------------------------------------
    def batches(self):
        """The training split, shuffled and augmented by this run's generator, in batches."""
        batches = iterate_batches(
            self.data.train,
            self.data.info,
            self.spec.recipe.batch_size,
            shuffle=True,
            augment=True,
            device=self.device,
            generator=self.generator,
        )
        return (distributed.shard(*batch) for batch in batches)  # this process's part of each batch

    def run_init_stage(self) -> None:
        """The method's declared pre-training stage (AB / FT / FSP style), if any."""
        stage = self.method.init_stage()
        if stage is None or self.init_done:
            self.init_done = True
            return
        parameters = list(stage.parameters)
        if stage.trains_student:
            parameters += [p for p in self.student.parameters()]
        recipe = self.spec.recipe
        lr = recipe.lr if stage.lr is None else stage.lr
        optimizer = torch.optim.SGD(
            parameters, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        scaler = self.precision.scaler()
        self.student.train()
        for epoch in range(1, stage.epochs + 1):
            total, steps = 0.0, 0
            for images, _, _ in self.batches():
                with self.precision.autocast():
                    student_out = _forward(self.train_student, images, self.student_features)
                    with torch.no_grad():
                        teacher_out = _forward(self.train_teacher, images, self.teacher_features)
                    loss = sum(stage.loss(student_out, teacher_out).values())
                self._check_finite(loss, f"init stage epoch {epoch} step {steps}")
                optimizer.zero_grad(set_to_none=True)
                backward_step(loss, optimizer, scaler, lambda: distributed.average_gradients(parameters))
                total, steps = total + float(loss.detach()), steps + 1
            self.progress(f"[{self.spec.run_id}] init stage {epoch}/{stage.epochs} loss {total / steps:.4f}")
        self.init_done = True

    def _check_finite(self, loss: torch.Tensor, where: str, terms: dict | None = None) -> None:
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (terms or {}).items())
            raise NonFiniteLossError(f"non-finite loss at {where}" + (f" ({detail})" if detail else ""))

    def begin_epoch(self, epoch: int) -> None:
        """Train mode, and the epoch hooks of the student's modules, the method and the wrappers."""
        self.student.train()
        self.method.train()
        _set_epoch_hooks([self.student, self.method], epoch, self.spec.recipe.epochs)
        for wrapper in self.wrappers:
            wrapper.set_epoch(self.student, epoch, self.spec.recipe.epochs)

    def step(
        self, images, labels, indices, where: str, teacher_out: Features | None = None
    ) -> tuple[float, dict[str, float]]:
        """One optimisation step on a batch: (total loss, each weighted term), as floats."""
        with self.precision.autocast():
            terms = self._loss_terms(images, labels, indices, teacher_out=teacher_out)
            loss = sum(terms.values())
        self._check_finite(loss, where, terms)
        self.optimizer.zero_grad(set_to_none=True)
        backward_step(loss, self.optimizer, self.scaler, self._average_gradients)
        return float(loss.detach()), {name: float(value.detach()) for name, value in terms.items()}

    def train_epoch(self, epoch: int) -> dict:
        self.begin_epoch(epoch)
        meter = EpochMeter()
        batches = self.batches()
        if self.progress_bar:
            steps_per_epoch = math.ceil(len(self.data.train) / self.spec.recipe.batch_size)
            batches = progress_bar(
                batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="step"
            )
        start = time.perf_counter()
        for images, labels, indices in batches:
            meter.add(*self.step(images, labels, indices, f"epoch {epoch} step {meter.steps}"), len(labels))
        meter.seconds = time.perf_counter() - start
        return self.close_epoch(epoch, meter)

    def close_epoch(self, epoch: int, meter: EpochMeter) -> dict:
        """The epoch's history entry (before evaluation); steps the lr schedule."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {
            "epoch": epoch,
            "train_loss": meter.loss_sum / meter.steps,
            "loss_terms": {name: value / meter.steps for name, value in meter.term_sums.items()},
            "epoch_seconds": meter.seconds,
            "images": meter.images,
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

        views = torch.Generator().manual_seed(0)  # the run's own view stream stays untouched

        def step():
            with self.precision.autocast():
                terms = self._loss_terms(images, labels, indices, student, method, view_generator=views)
                return sum(terms.values())

        frozen = [self.teacher] if self.teacher is not None else []
        costs = measure_train_step(step, trained, frozen, len(labels), self.device)
        torch.set_rng_state(rng_state)
        example = torch.zeros(1, info.in_chans, *info.image_size, device=self.device)
        costs["teacher_flops_per_image"] = inference_flops(self.teacher, example) if self.teacher else 0
        costs["extra_trainable_params"] = parameter_count(method, trainable_only=True) + sum(
            p.numel() for wrapper in self.wrappers for p in wrapper.parameters(self.student)
        )
        return costs

    def deployed_student(self) -> tuple[nn.Module, float | None]:
        """The student as deployed (each wrapper exported into the plain architecture, then the
        method's `deploy`), and the max |deployed - trained| output on a test batch; (the
        deployed model, None) without wrappers."""
        trained = self.method.deploy(self.student)
        if not self.wrappers:
            return trained, None
        info = self.data.info
        deployed = self.student
        for wrapper in self.wrappers:
            plain = build_model(
                self.spec.student,
                num_classes=info.num_classes,
                in_chans=info.in_chans,
                image_size=info.image_size,
            )
            deployed = wrapper.export(deployed, plain.to(self.device)).eval()
        deployed = self.method.deploy(deployed).eval()
        self.student.eval()
        trained.eval()
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
            export_error = float((deployed(example) - trained(example)).abs().max())
        return deployed, export_error

    def prepare(self) -> None:
        """Everything before the first epoch: resume from a checkpoint, measure costs, init stage."""
        self.try_resume()
        self.costs = self.measure_costs()
        if not self.init_done:
            self.run_init_stage()
            self.save_checkpoint(0)

    def finish_epoch(self, entry: dict) -> None:
        """Evaluate where the recipe says so, record the epoch, checkpoint it, print its line."""
        recipe, epoch = self.spec.recipe, entry["epoch"]
        evaluated = ""
        if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
            model = self.method.deploy(self.student)  # what is deployed is what is measured
            test = evaluate(model, self.data.test, self.data.info, self.device, self.precision.autocast)
            entry.update(test_top1=test["top1"], test_top5=test["top5"])
            evaluated = f" test top-1 {test['top1']:.2f}%"
            if self.data.val is not None:
                entry["val_top1"] = evaluate(
                    model, self.data.val, self.data.info, self.device, self.precision.autocast
                )["top1"]
        self.history.append(entry)
        if self.on_epoch is not None:
            self.on_epoch(self.spec, entry)
        self.train_seconds += entry["epoch_seconds"]
        self.save_checkpoint(epoch)
        self.progress(
            f"[{self.spec.run_id}] {self.spec.label} epoch {epoch}/{recipe.epochs} "
            f"loss {entry['train_loss']:.4f}{evaluated} "
            f"({entry['epoch_seconds']:.1f}s, {entry['images'] / entry['epoch_seconds']:.0f} img/s)"
        )

    def run(self) -> TrainResult:
        """Train to the end (resuming if a checkpoint exists) and return the measured results."""
        self.prepare()
        for epoch in range(self.start_epoch, self.spec.recipe.epochs + 1):
            self.finish_epoch(self.train_epoch(epoch))
        return self.result()

    def result(self) -> TrainResult:
        """The record's measured part, once every epoch is done."""
        costs = self.costs
        deployed, export_error = self.deployed_student()
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
                "export_max_abs_error": export_error,
            },
            # each registered wrapper's summary under its name: None where the run did not use it
            **dict.fromkeys(WRAPPERS.module_dict),
            **{wrapper.name: wrapper.summary(self.student) for wrapper in self.wrappers},
            # a student model's own JSON-able findings, where it defines `analysis()`
            "analysis": self.student.analysis() if hasattr(self.student, "analysis") else None,
            "seeds": self.seeds,  # which seed drove which random source
            "final_state": deployed.state_dict(),
        }


def train(spec: RunSpec, data: PreparedData, **trainer_options) -> tuple[TrainResult, dict]:
    """Train one spec to the end (resuming from its checkpoint): (measured result, deployed
    state_dict). `trainer_options` are Trainer's keyword arguments (teacher, device, out, ...)."""
    started = time.perf_counter()
    result = Trainer(spec, data, **trainer_options).run()
    result["wall_seconds"] = time.perf_counter() - started
    return result, result.pop("final_state")
