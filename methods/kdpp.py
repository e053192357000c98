"""KD++ (ND loss): Wang, Cheng, Duan, Wang, Feng & Kong, "Improving Knowledge Distillation via
Regularizing Feature Norm and Direction", ICCV 2023.

A student's embedding (the pooled penultimate vector) should point along its class's direction in
the teacher's embedding space and be long. With e_c the unit vector of the mean teacher embedding
of class c over the training set, s and t the student's and teacher's embeddings of a sample of
class c, the norm-and-direction (ND) loss is

    L_ND = 1 - <s, e_c> / max(||s||, ||t||)

averaged over the batch, and KD++ adds it to KD:

    L = ce_weight * CE + w(epoch) * kd_factor * T^2 * KL(p_t^T || p_s^T) + nd_factor * L_ND

Where the student's embedding is narrower or wider than the teacher's, a projector
BN1d - Dropout(0.5) - Linear(D_s, D_t) (zero bias) maps it first; the student classifies from its
own embedding, unchanged.

kdbench follows the authors' code (WangYZ1608/Knowledge-Distillation-via-ND at
fc6f3f9058ed35189a1d3c0a79a7594025e4d88f, CIFAR/train_cifar_kd.py, CIFAR/utils.py `DirectNormLoss`,
CIFAR/Models/embtrans_cifar.py `EmbTrans`) in two details the paper leaves out: the KD term is
warmed up, w = min(1, e / 20) with e the epoch counted from 0 (so it is off during the first epoch),
and the projector is used where the embedding widths differ. One departure: the authors compute the
class means in a separate pass of the frozen teacher (in eval mode) over the augmented training set
before training (CIFAR/emb_fea_distribution.py); a kdbench method sees no data before training, so
it accumulates the same means from the teacher's embeddings of the batches of the first epoch,
using the means so far (this batch included) during that epoch and the complete ones after it. A
class not yet seen when the epoch ends goes on accumulating until it is.

DKD++ (`dkdpp`, the authors' CIFAR/train_cifar_dkd.py) adds the same ND loss
to DKD (methods/dkd.py) in place of KD, with the same warm-up on the DKD terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._shared import standardized_pair
from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    kd_kl_div,
    register_method,
    require_same_classes,
    scale_schedule,
)
from .dkd import decoupled_kd_parts


def embedding_projector(student_width: int, teacher_width: int) -> nn.Sequential:
    """EmbTrans's fc1: BN1d (weight 1, bias 0) - Dropout(0.5) - Linear(D_s, D_t) with zero bias."""
    projector = nn.Sequential(
        nn.BatchNorm1d(student_width), nn.Dropout(0.5), nn.Linear(student_width, teacher_width)
    )
    nn.init.zeros_(projector[2].bias)
    return projector


def norm_direction_loss(student_emb: Tensor, teacher_emb: Tensor, class_directions: Tensor) -> Tensor:
    """mean_i 1 - <s_i, e_c(i)> / max(||s_i||, ||t_i||); `class_directions` holds each sample's unit e_c."""
    longest = torch.maximum(student_emb.norm(dim=1), teacher_emb.norm(dim=1))
    return (1 - (student_emb * class_directions).sum(dim=1) / longest).mean()


class ClassMeans(nn.Module):
    """The teacher's mean embedding of every class, summed from the batches it is shown (buffers, so a
    resumed run keeps them)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.register_buffer("sums", torch.zeros(num_classes, width))
        self.register_buffer("counts", torch.zeros(num_classes))

    def add(self, embeddings: Tensor, labels: Tensor, every_class: bool) -> None:
        """Add a batch's embeddings: to every class when `every_class`, else to classes not seen yet."""
        embeddings = embeddings.detach().to(self.sums.dtype)
        if not every_class:
            unseen = self.counts[labels] == 0
            embeddings, labels = embeddings[unseen], labels[unseen]
        self.sums.index_add_(0, labels, embeddings)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    def directions(self, labels: Tensor) -> Tensor:
        """e_c for each label: the unit vector of its class mean (the sum's direction)."""
        return F.normalize(self.sums[labels], dim=1)


@register_method
class KDPP(Method):
    """KD++: KD plus the ND loss, the student's embedding pulled along its class's teacher mean direction.

    Defaults from the authors' CIFAR-100 scripts (WangYZ1608/Knowledge-Distillation-via-ND at fc6f3f9,
    CIFAR/README.md and CIFAR/train_cifar.sh, resnet56 -> resnet20): CE 1.0, KD 1.0 at T 4
    (`--t` default), ND 2.0, KD warm-up 20 epochs (`--warm_up` default; kdbench scales it to a shorter
    run as DKD's). Their other pairs (CE + KD + ND): resnet32x4 -> resnet8x4 1 + 3.5 + 2.0,
    wrn40_2 -> wrn40_1 1 + 1 + 1.5, resnet50 -> mobilenetv2 1 + 3 + 0.5, resnet32x4 -> shufflenetv1
    1 + 2.5 + 1.5, resnet32x4 -> shufflenetv2 1 + 4 + 0.5 (`kd_factor`, `nd_factor`).
    """

    name = "kdpp"
    # the class means are summed from each process's own samples: under torchrun the ranks' means
    # would differ
    distributed_ok = False
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "kd_factor": 1.0,
        "nd_factor": 2.0,
        "warmup_epochs": 20,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes(cls.name, student_shapes, teacher_shapes)
        if len(student_shapes.pooled) != 1 or len(teacher_shapes.pooled) != 1:
            raise PairNotSupportedError(
                f"{cls.name} compares embedding vectors: the student's pooled features are {student_shapes.pooled}, "
                f"the teacher's {teacher_shapes.pooled}"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        (student_width,), (teacher_width,) = context.student_shapes.pooled, context.teacher_shapes.pooled
        self.projector = (
            embedding_projector(student_width, teacher_width) if student_width != teacher_width else None
        )
        self.class_means = ClassMeans(context.num_classes, teacher_width)
        self.kd_ramp = 1.0
        self.first_epoch = True

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        warmup_epochs = scale_schedule(self.hp["warmup_epochs"], num_epochs)
        self.kd_ramp = min((epoch - 1) / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0
        self.first_epoch = epoch <= 1

    def norm_direction(self, student: Features, teacher: Features, labels: Tensor) -> Tensor:
        """L_ND of the batch, its teacher embeddings first added to the class means while training."""
        if self.training:
            self.class_means.add(teacher.pooled, labels, every_class=self.first_epoch)
        student_emb = self.projector(student.pooled) if self.projector is not None else student.pooled
        return norm_direction_loss(student_emb, teacher.pooled.detach(), self.class_means.directions(labels))

    def logit_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """The logit distillation the ND loss is added to, before the warm-up: KD's here."""
        return {
            "kdpp_kd": self.hp["kd_factor"]
            * kd_kl_div(student_logits, teacher_logits, self.hp["temperature"])
        }

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        nd = self.norm_direction(student, teacher, labels)
        logits = standardized_pair(student.logits, teacher.logits, self.hp["logit_std"])
        terms = {name: self.kd_ramp * term for name, term in self.logit_terms(*logits, labels).items()}
        return {**terms, f"{self.name}_nd": self.hp["nd_factor"] * nd}


@register_method
class DKDPP(KDPP):
    """DKD++: DKD plus the ND loss, the student's embedding pulled along its class's teacher mean direction.

    DKD's TCKD and NCKD (methods/dkd.py) in place of KD, with KD++'s warm-up (epochs counted from 0)
    and ND loss. Defaults from the authors' CIFAR-100 script (WangYZ1608/Knowledge-Distillation-via-ND
    at fc6f3f9, CIFAR/train_cifar.sh, DKD section, resnet56 -> resnet20): CE 1, alpha (TCKD) 2.5,
    beta (NCKD) 4.0, ND 3.5, T 4, warm-up 20. Their other pairs (alpha, beta, ND): resnet32x4 ->
    resnet8x4 2.0, 8.0, 0.5; wrn40_2 -> wrn40_1 1.0, 6.0, 1.0; resnet50 -> mobilenetv2 0.5, 8.0, 1.0;
    resnet32x4 -> shufflenetv1 0.5, 8.0, 4.0; resnet32x4 -> shufflenetv2 0.5, 6.0, 0.5.
    """

    name = "dkdpp"
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "alpha": 2.5,
        "beta": 4.0,
        "nd_factor": 3.5,
        "warmup_epochs": 20,
    }

    def logit_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        tckd, nckd = decoupled_kd_parts(student_logits, teacher_logits, labels, self.hp["temperature"])
        return {"dkdpp_tckd": self.hp["alpha"] * tckd, "dkdpp_nckd": self.hp["beta"] * nckd}
