"""A member: one run's state inside the training loop (kdbench/training/engine.py).

Its student (wrapped by its wrappers), its method and the method's modules, its optimizer and lr
schedule, its random streams (torch's global stream, kept per member and swapped in around
everything it does; its batch generator; its extra-view generator), its precision and its
checkpoint. What a member does alone lives here: its loss terms and its optimisation step on a
batch, its method's init stage, its epoch hooks, saving and resuming its checkpoint. What members
share (the batches, the teacher forward, evaluation) is the loop's.

The member knows no method and no wrapper by name: it asks the method which features it reads
(and hands it only those), which parameters it trains, whether it has an init stage
(`InitStage`), which extra augmented views of a batch it reads (`extra_views`: drawn by
kdbench/data/__init__.py's `augment_views` from a generator of the run's own, the student and the
teacher run on each), and sums the loss terms it returns; student wrappers (VAM) go through the
`StudentWrapper` interface of kdbench/wrappers/base.py. `set_epoch(epoch, num_epochs)` is called
on any student module or method that defines it (VAM temperature annealing, DKD warm-up, HME
routing schedules), and on every wrapper.

The model protocol (kdbench/models/__init__.py): `model(x)` -> logits, `model(x, features=True)`
-> `Features` (kdbench/core/features.py), `model.stage_modules()` -> the stages, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdbench.core import distributed
from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.spec import RunSpec
from kdbench.core.store import (
    CheckpointError,
    TrainResult,
    atomic_torch_save,
    checkpoint_path,
    read_checkpoint,
    read_student_init,
)
from kdbench.data import MEMORY_FORMAT, DatasetInfo, PreparedData, augment_views, iterate_batches
from kdbench.methods.base import Method, MethodContext, method_class
from kdbench.models import build_model, load_weights
from kdbench.training.precision import Precision, backward_step
from kdbench.training.seeds import source_seeds, stream_seeds
from kdbench.wrappers import build_wrappers


class NonFiniteLossError(KdbenchError, RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed."""


def forward(model: nn.Module, images: torch.Tensor, fields: tuple[str, ...]) -> Features:
    """Logits, plus the declared `Features` fields (a forward without features when none are)."""
    if fields:
        return model(images, features=True).only(fields)
    return Features(logits=model(images), pooled=None)


def probe_shapes(model: nn.Module, info: DatasetInfo, device: torch.device) -> FeatureShapes:
    was_training = model.training
    model.eval()
    example = torch.zeros(2, info.in_chans, *info.image_size, device=device)
    with torch.no_grad():
        shapes = FeatureShapes.of(model(example, features=True))
    model.train(was_training)
    return shapes


def check_finite(loss: torch.Tensor, where: str, terms: dict | None = None) -> None:
    if not torch.isfinite(loss):
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (terms or {}).items())
        raise NonFiniteLossError(f"non-finite loss at {where}" + (f" ({detail})" if detail else ""))


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


def _set_epoch_hooks(modules: list[nn.Module], epoch: int, num_epochs: int) -> None:
    for root in modules:
        for module in root.modules():
            hook = getattr(module, "set_epoch", None)
            if callable(hook):
                hook(epoch, num_epochs)


class Member:
    """One RunSpec's state in the loop. Building it seeds torch's global stream with the spec's
    seed (as a run alone does) and keeps what the construction leaves as the member's own stream."""

    def __init__(
        self,
        spec: RunSpec,
        data: PreparedData,
        *,
        teacher: nn.Module | None,
        device: torch.device,
        out: Path,
        progress: Callable[[str], None],
    ):
        self.started = time.perf_counter()
        self.spec, self.data, self.device, self.out, self.progress = spec, data, device, Path(out), progress
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
        self.method = self._build_method(method_class(spec.method))
        # extra views draw from a stream of their own: the batches stay those of every other run
        self.view_generator = torch.Generator().manual_seed(streams["views"]) if self.extra_views else None
        self.seeds = source_seeds(spec.seed, bool(self.extra_views))
        self.optimizer = self._build_optimizer()
        recipe = spec.recipe
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(recipe.lr_decay_epochs), gamma=recipe.lr_decay_rate
        )
        self.generator = torch.Generator().manual_seed(streams["batches"])
        self.history: list[dict] = []
        self.start_epoch = 1
        self.init_done = False
        self.train_seconds = 0.0
        self.costs: dict = {}  # measured before the first epoch (kdbench/training/measure.py)
        self.error: Exception | None = None  # why the member failed (non-finite loss, ...)
        self.result: TrainResult | None = None  # the record's measured part, once trained
        self.fused_members = 0  # the most members it trained fused with (kdbench/training/fused.py)
        # the member's own global stream, from here on swapped in around everything it does
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state() if device.type == "cuda" else None

    def _build_method(self, method_cls: type[Method]) -> Method:
        """The method's modules, built from the feature shapes (its pair refused before any training)."""
        info, data, spec, teacher = self.data.info, self.data, self.spec, self.teacher
        if distributed.world_size() > 1 and not method_cls.distributed_ok:  # the sweep refuses it first
            raise ConfigError(f"{spec.method} cannot train on {distributed.world_size()} processes")
        student_shapes = probe_shapes(self.student, info, self.device)
        teacher_shapes = probe_shapes(teacher, info, self.device) if teacher is not None else None
        method_cls.check_pair(student_shapes, teacher_shapes)
        context = MethodContext(
            student_shapes=student_shapes,
            teacher_shapes=teacher_shapes,
            num_classes=info.num_classes,
            num_train=len(data.train.labels),
            train_labels=data.train.labels.to(self.device),
            num_epochs=spec.recipe.epochs,
            # this process's part of a full batch (`distributed.shard` slices every world-th sample)
            batch_size=len(range(distributed.rank(), spec.recipe.batch_size, distributed.world_size())),
            image_shape=(info.in_chans, *info.image_size),
            teacher=teacher,
            student=self.student,
        )
        method = method_cls(dict(spec.hp), context).to(self.device, memory_format=MEMORY_FORMAT)
        self.student_features = method_cls.student_features
        self.teacher_features = method_cls.teacher_features
        self.extra_views = method_cls.extra_views
        return method

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The method's optimizer (`Method.build_optimizer`, SGD unless the method has its own) over
        the student and the method's trainable modules, plus each wrapper's own groups."""
        recipe = self.spec.recipe
        wrapper_groups = [g for w in self.wrappers for g in w.param_groups(self.student, recipe.lr)]
        grouped = {id(p) for group in wrapper_groups for p in group["params"]}
        student_params = [p for p in self.student.parameters() if id(p) not in grouped]
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        groups = [{"params": student_params + method_params}, *wrapper_groups]
        return self.method.build_optimizer(groups, recipe)

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this member's global random state in place, and keep what it leaves."""
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state()

    # -- losses -----------------------------------------------------------------------------
    def _teacher_forward(self, images) -> Features | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            return forward(self.train_teacher, images, self.teacher_features)

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
            name: (forward(student, view, self.student_features), self._teacher_forward(view))
            for name, view in views.items()
        }

    def loss_terms(
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
        teacher's features when the loop computed them already; extra views drawn from
        `view_generator`, the run's own by default)."""
        student = student or self.train_student
        method = method or self.method
        student_out = forward(student, images, self.student_features)
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

    def _backward_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, retain_graph=False
    ) -> None:
        """What a method's `optimizer_step` backpropagates and steps with: this member's gradient
        scaler and distributed gradient averaging."""
        backward_step(loss, optimizer, self.scaler, self._average_gradients, retain_graph)

    # -- training ----------------------------------------------------------------------------
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
        """The method's declared pre-training stage (AB / FT / FSP style), if any: the member's own
        optimizer over the stage's parameters, on batches of its own generator (and the method's
        extra views, drawn from its view stream, where it declares them)."""
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
            for images, _, indices in self.batches():
                with self.precision.autocast():
                    student_out = forward(self.train_student, images, self.student_features)
                    with torch.no_grad():
                        teacher_out = forward(self.train_teacher, images, self.teacher_features)
                    extra = {}
                    # a stage of a method with views reads them too (SSKD's teacher head)
                    if self.extra_views:
                        extra["views"] = self._views(images, indices, self.train_student, self.view_generator)
                    loss = sum(stage.loss(student_out, teacher_out, **extra).values())
                check_finite(loss, f"init stage epoch {epoch} step {steps}")
                optimizer.zero_grad(set_to_none=True)
                backward_step(loss, optimizer, scaler, lambda: distributed.average_gradients(parameters))
                total, steps = total + float(loss.detach()), steps + 1
            self.progress(f"[{self.spec.run_id}] init stage {epoch}/{stage.epochs} loss {total / steps:.4f}")
        self.init_done = True

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
            terms = self.loss_terms(images, labels, indices, teacher_out=teacher_out)
            loss = sum(terms.values())
        check_finite(loss, where, terms)
        self.method.optimizer_step(terms, self.optimizer, self._backward_step)
        return float(loss.detach()), {name: float(value.detach()) for name, value in terms.items()}

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
