"""The `Method` contract every KD method implements (docs/DESIGN.md, "Method").

A method is an `nn.Module` registered by name in `kdbench.core.registries.METHODS`. The engine
builds it from the probed feature shapes of the student and the teacher, trains its
parameters together with the student's, and sums the weighted terms that `losses` returns:

    total = ce_weight * CE(student_logits, y)
          + kd_weight * KL(softmax(teacher_logits / T) || softmax(student_logits / T)) * T^2
          + method_weight * sum(method_terms)

which is RepDistiller's -r / -a / -b convention (Tian et al., ICLR 2020, train_student.py).
A method only writes `method_terms`; CE and the KD term are shared here.

Optional hooks, each called by the engine for every method alike (docs/DESIGN.md, "Method"):

    extra_views = ("strong",)   more augmented views of each training batch: the engine draws them
                                (kdbench/data/views.py, `augment_views`, from a generator of the run's own),
                                runs the student and the teacher on each and passes
                                `views={name: (student Features, teacher Features)}` to `losses` and
                                `method_terms`; a method that declares none never receives `views`
    deploy(student)             the model that is evaluated and deployed: the student itself unless
                                the method's modules are part of the deployed network (SimKD keeps a
                                projector and the teacher's classifier); the record's test accuracy,
                                deploy params / FLOPs and saved weights are those of this model
    build_optimizer(groups, recipe) the optimizer over the member's parameter groups (default: SGD
                                with the recipe's lr, momentum and weight decay); a method with its
                                own update rule returns its own (DOT, methods/dot.py)
    optimizer_step(terms, optimizer, backward_step)
                                one optimisation step on the batch's weighted loss terms (default:
                                one backward of their sum and one step); `backward_step(loss, optimizer,
                                retain_graph=False)` is the member's backward and step, through its
                                gradient scaler and the distributed gradient averaging
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError, PairNotSupportedError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, RegistrationError, UnknownNameError, lookup
from kdbench.methods._shared import standardized_pair


@dataclass(frozen=True)
class MethodContext:
    """What a method may know when it builds its extra modules."""

    student_shapes: FeatureShapes
    teacher_shapes: FeatureShapes | None
    num_classes: int
    num_train: int  # size of the training set (memory banks index it)
    train_labels: Tensor  # (num_train,) int64, for class-aware negative sampling
    num_epochs: int = 240  # length of the main stage; published schedules scale with it
    batch_size: int = 64  # samples of a full training batch in this process (SemCKD's embeddings read it)
    image_shape: tuple[int, ...] = (3, 32, 32)  # (C, H, W) of an input image
    teacher: nn.Module | None = None  # the frozen teacher itself, read-only (SimKD reuses its classifier)
    # the live (possibly VAM-wrapped) student: a method may call its modules (SDD its classifier) but
    # must not register them as its own (keep them out of `Method.parameters()` and its state_dict)
    student: nn.Module | None = None


# RepDistiller's and mdistiller's CIFAR-100 schedules are 240 epochs long; epoch counts in
# published defaults (init stages, warm-ups) are fractions of that.
PUBLISHED_EPOCHS = 240


def scale_schedule(published_epochs: float, num_epochs: int) -> float:
    """A published epoch count, shrunk in proportion for a run shorter than 240 epochs."""
    return published_epochs * min(1.0, num_epochs / PUBLISHED_EPOCHS)


@dataclass
class InitStage:
    """An optional pre-training stage declared by a method (AB / FT / FSP style).

    The engine trains `parameters` (plus the student's own when `trains_student`) for `epochs`
    epochs on `loss(student_feats, teacher_feats)` before the main stage, with the same data and
    optimizer recipe; nothing else about it is method-specific.
    """

    epochs: int
    parameters: list[nn.Parameter]
    # callable(student: Features, teacher: Features) -> dict[str, Tensor]; a method with `extra_views`
    # also receives `views=` as `method_terms` does (SSKD trains its teacher head on the rotations)
    loss: object
    trains_student: bool = False  # AB / FSP pre-train the student's layers too; FT only its paraphraser
    lr: float | None = (
        None  # the stage's own learning rate where the method publishes one (FT); else the recipe's
    )


def kd_kl_div(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: KL(p_t^T || p_s^T) * T^2, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _coerce(name: str, default, value):
    """`value` as the type of `default`; a ConfigError naming the hyper-parameter when it is not one."""
    if isinstance(default, bool):
        word = str(value).strip().lower()
        if isinstance(value, bool) or word in _TRUE + _FALSE:
            return value if isinstance(value, bool) else word in _TRUE
        raise ConfigError(f"hyper-parameter {name}={value!r}: takes true or false (also 1/0, yes/no)")
    if not isinstance(default, (int, float)):
        return value
    kind = "a whole number" if isinstance(default, int) else "a number"
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (isinstance(default, int) and not number.is_integer()):
        raise ConfigError(f"hyper-parameter {name}={value!r}: takes {kind}")
    return type(default)(number) if isinstance(default, int) else type(default)(value)


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement `method_terms`."""

    name: ClassVar[str] = ""  # the registry name (`register_method` reads it): written once, here
    needs_teacher: ClassVar[bool] = True
    # False for a method whose state follows individual samples (a memory bank): under torchrun
    # each rank would update it from its own shard only, so the engine refuses the run.
    distributed_ok: ClassVar[bool] = True
    # Which `Features` fields the method reads beyond logits; the engine hands it only these
    # (an undeclared field reaches the method empty), and skips the feature forward without any.
    student_features: ClassVar[tuple[str, ...]] = ()
    teacher_features: ClassVar[tuple[str, ...]] = ()
    # Extra augmented views of each training batch the method reads (names in kdbench.data.VIEWS,
    # e.g. ("strong",)); the engine draws them, runs the student and the teacher on them (with the
    # declared features) and passes `views` to `losses` / `method_terms`. Empty: no extra view.
    extra_views: ClassVar[tuple[str, ...]] = ()
    # True for a method tested to train fused with others of its student architecture (`--fuse on`,
    # kdbench/training/fused.py; tests/training/test_fused.py): its losses read only its own slice of a batched
    # forward and draw no random numbers.
    fuses: ClassVar[bool] = False
    # The pair kinds the method serves (PAIR_KINDS, by the networks' `model_family`; `kdbench list methods
    # --verbose` shows them). None: from the features it reads, every kind for a method that reads no
    # stage output of either network, else "cnn" only; a method that serves token models declares them.
    pair_kinds: ClassVar[tuple[str, ...] | None] = None
    # Published defaults (cite the source in the subclass docstring). Shared keys:
    # ce_weight (-r), kd_weight (-a), method_weight (-b), temperature (T).
    defaults: ClassVar[dict] = {}
    base_defaults: ClassVar[dict] = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 0.0,
        "temperature": 4.0,
        "label_smoothing": 0.0,
        "logit_std": False,  # z-score logits before the KD softmax (Sun et al., CVPR 2024; methods/_shared.py)
    }

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__()
        refuse_pair_kind(type(self), context.student, context.teacher)
        self.hp = hp
        self.context = context

    @classmethod
    def served_pair_kinds(cls) -> tuple[str, ...]:
        """`pair_kinds`, or where it is None, the kinds its declared features allow."""
        if cls.pair_kinds is not None:
            return cls.pair_kinds
        reads_stages = set(STAGE_FIELDS) & set(cls.student_features + cls.teacher_features)
        return ("cnn",) if reads_stages else PAIR_KINDS

    @classmethod
    def resolve_hp(cls, overrides: dict | None = None) -> dict:
        """Base defaults < the method's published defaults < user overrides; unknown keys refused,
        each value converted to its default's type (bool, int, float) or refused."""
        hp = {**cls.base_defaults, **cls.defaults}
        for key, value in (overrides or {}).items():
            if key not in hp:
                raise ConfigError(
                    f"method '{cls.name}' has no hyper-parameter '{key}'; it has: {', '.join(sorted(hp))}"
                )
            hp[key] = _coerce(f"{cls.name}.{key}", hp[key], value)
        return hp

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        """Raise PairNotSupportedError if the method cannot serve these shapes. Default: any pair."""

    def init_stage(self) -> InitStage | None:
        return None

    def init_epochs(self) -> int:
        """hp `init_epochs` (published for 240-epoch runs), scaled to this run's length, at least 1."""
        return max(1, round(scale_schedule(self.hp["init_epochs"], self.context.num_epochs)))

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        """The method's own loss terms, unweighted. Default: none (plain CE / KD).

        A method that declares `extra_views` also receives `views` (keyword): for each view name,
        (student Features, teacher Features or None) of the batch so augmented, in the batch's order.
        """
        return {}

    def deploy(self, student: nn.Module) -> nn.Module:
        """The model that is evaluated and deployed, given the trained (or exported) `student`.

        Default: the student itself. A method whose own modules belong to the deployed network
        returns a new module (copies: using it changes nothing in training) that follows the model
        protocol; the engine measures test accuracy, deploy params / FLOPs and saves weights on it.
        """
        return student

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        labels: Tensor,
        indices: Tensor,
        views: dict[str, tuple[Features, Features | None]] | None = None,
    ) -> dict[str, Tensor]:
        """All weighted loss terms; the engine sums them. `views`: see `extra_views`."""
        hp = self.hp
        terms: dict[str, Tensor] = {}
        if hp["ce_weight"]:
            terms["ce"] = hp["ce_weight"] * F.cross_entropy(
                student.logits, labels, label_smoothing=hp["label_smoothing"]
            )
        if hp["kd_weight"]:
            student_logits, teacher_logits = standardized_pair(
                student.logits, teacher.logits, hp["logit_std"]
            )
            terms["kd"] = hp["kd_weight"] * kd_kl_div(student_logits, teacher_logits, hp["temperature"])
        extra = {"views": views} if self.extra_views else {}
        for term_name, value in self.method_terms(student, teacher, labels, indices, **extra).items():
            terms[term_name] = hp["method_weight"] * value
        return terms

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called by the engine at the start of each epoch (1-based), e.g. for DKD's warm-up."""

    def build_optimizer(self, groups: list[dict], recipe) -> torch.optim.Optimizer:
        """The optimizer over `groups` (the student's and this method's parameters first, then each
        wrapper's own groups). Default: RepDistiller's SGD with the recipe's lr, momentum, weight decay."""
        return torch.optim.SGD(
            groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )

    def optimizer_step(
        self,
        terms: dict[str, Tensor],
        optimizer: torch.optim.Optimizer,
        backward_step: Callable[..., None],
    ) -> None:
        """One optimisation step on the batch's weighted loss terms. Default: one backward of their
        sum, one step. `backward_step(loss, optimizer, retain_graph=False)` backpropagates `loss`
        and steps `optimizer` as the member does (gradient scaler, distributed averaging)."""
        optimizer.zero_grad(set_to_none=True)
        backward_step(sum(terms.values()), optimizer)


# What a pair is, by the families of its networks: "cnn" (both CNNs), "hetero" (a CNN and a token model:
# a ViT, Swin or MLP-Mixer through timm, kdbench/models/timm_adapter.py), "token" (both token models).
PAIR_KINDS = ("cnn", "hetero", "token")
STAGE_FIELDS = ("stem", "stages", "preact")  # the Features fields a token model fills with token grids


def model_family(model: nn.Module | None) -> str:
    """The model's family: "token" for a model whose stages hold no convolution (its `family`, set by
    the timm adapter), else "cnn" (every zoo model; None, a model not known, counts as a CNN)."""
    return getattr(model, "family", "cnn")


def pair_kind(student: nn.Module | None, teacher: nn.Module | None) -> str:
    families = {model_family(student)} | ({model_family(teacher)} if teacher is not None else set())
    return "hetero" if len(families) > 1 else families.pop()


def refuse_pair_kind(cls: type[Method], student: nn.Module | None, teacher: nn.Module | None) -> None:
    """One line, before training, where the pair's kind is not one `cls` serves: it reads stage maps a
    token model has only as token grids."""
    kind = pair_kind(student, teacher)
    if kind in cls.served_pair_kinds():
        return
    roles = [
        (role, m) for role, m in (("student", student), ("teacher", teacher)) if model_family(m) == "token"
    ]
    named = " and ".join(f"the {role} {getattr(m, 'architecture', type(m).__name__)}" for role, m in roles)
    what = "is a token model" if len(roles) == 1 else "are token models"
    raise PairNotSupportedError(
        f"{cls.name} reads CNN stage maps and {named} {what} (ViT / Swin / MLP-Mixer: no convolution in "
        f"its stages); it serves {', '.join(cls.served_pair_kinds())} pairs, not {kind}"
    )


# The `check_pair` preambles methods share: each refuses a pair with a message naming the method.


def require_stages(method: str, student: FeatureShapes, teacher: FeatureShapes | None) -> None:
    """Refuse a pair without stage outputs on both sides (feature-level methods)."""
    if teacher is None or not student.stages or not teacher.stages:
        raise PairNotSupportedError(f"{method} needs stage outputs from both the student and the teacher")


def require_spatial_stages(method: str, student: FeatureShapes, teacher: FeatureShapes | None) -> None:
    """Refuse a pair whose stage outputs are not (C, H, W) maps on both sides."""
    require_stages(method, student, teacher)
    if any(len(shape) != 3 for shape in student.stages + teacher.stages):
        raise PairNotSupportedError(f"{method} needs (C, H, W) stage outputs on both sides")


def require_paired_stages(method: str, student: FeatureShapes, teacher: FeatureShapes | None) -> None:
    """Refuse a pair whose stage outputs cannot be paired one to one as (C, H, W) maps."""
    require_stages(method, student, teacher)
    if len(student.stages) != len(teacher.stages):
        raise PairNotSupportedError(
            f"{method} pairs stages one to one: the student has {len(student.stages)} stages, "
            f"the teacher {len(teacher.stages)}"
        )
    require_spatial_stages(method, student, teacher)


def require_same_classes(method: str, student: FeatureShapes, teacher: FeatureShapes | None) -> None:
    """Refuse a pair whose logits do not cover the same classes (logit-level methods)."""
    if teacher is None or student.logits != teacher.logits:
        raise PairNotSupportedError(
            f"{method} compares class distributions: the student has {student.logits} logits, "
            f"the teacher {None if teacher is None else teacher.logits}"
        )


# The method every leaderboard delta is measured against (methods/student.py); teachers train with it too.
BASELINE_METHOD = "student"

# RepDistiller's "+KD" rows (e.g. CRD+KD in the CRD paper, Table 1) add Hinton's term with -a 1.
COMPOSED_KD_WEIGHT = 1.0


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method under its own `name` attribute."""
    if not cls.name:
        raise RegistrationError(
            f"method class {cls.__qualname__} has no `name`; set the class attribute it is registered by"
        )
    METHODS.register_module(name=cls.name, module=cls)  # the name is checked there (registries.NAME_RULE)
    return cls


@cache
def method_class(name: str) -> type[Method]:
    """A registered method by name, or 'NAME+kd': that method plus vanilla KD (kd_weight 1).

    A composition is built on first use and cached here; the registry holds registered methods only.
    """
    base_name, plus, addition = name.partition("+")
    base = lookup(METHODS, "method", base_name)
    if not plus:
        return base
    if addition != "kd" or not base.needs_teacher or base.defaults.get("kd_weight", 0.0):
        raise UnknownNameError(
            f"unknown method '{name}': only NAME+kd composes, for a method with a teacher and no KD term "
            f"of its own (e.g. crd+kd)"
        )
    composed = type(
        f"{base.__name__}PlusKD",
        (base,),
        {
            "__doc__": f"{base_name} + vanilla KD (kd_weight {COMPOSED_KD_WEIGHT}, RepDistiller's '+KD' rows).",
            "name": name,
            "defaults": {**base.defaults, "kd_weight": COMPOSED_KD_WEIGHT},
        },
    )
    return composed


def extra_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "BASELINE_METHOD",
    "Features",
    "FeatureShapes",
    "InitStage",
    "Method",
    "PAIR_KINDS",
    "model_family",
    "pair_kind",
    "MethodContext",
    "PUBLISHED_EPOCHS",
    "scale_schedule",
    "PairNotSupportedError",
    "extra_parameter_count",
    "kd_kl_div",
    "method_class",
    "register_method",
    "require_paired_stages",
    "require_same_classes",
    "require_spatial_stages",
    "require_stages",
]


def probe_features(model: nn.Module, image_shape: tuple[int, ...]) -> Features:
    """`model`'s Features on a fixed random batch of two `image_shape` (C, H, W) images, in eval mode
    and without gradients (its mode restored): how a method finds which of a model's layers or
    maps is which (simkd's classifier, sdd's pooled map)."""
    probe = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(probe.to(next(model.parameters()).device), features=True)
    finally:
        model.train(was_training)
