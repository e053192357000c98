"""SRD: Miles & Mikolajczyk, "Understanding the Role of the Projector in Knowledge Distillation",
AAAI 2024 (arXiv 2303.11098).

The student's pooled representation z_s is mapped by a linear projector W onto the teacher's width;
both are batch-normalised without affine parameters (statistics of the batch), and their difference
is penalised through a soft maximum, the log of the summed 4th powers (the paper's normalisation,
projector and soft-maximum ingredients):

    BN(x)  = (x - mean_batch(x)) / sqrt(var_batch(x) + eps)      per feature, biased variance
    L_rep  = log sum_{i,d} | BN(W z_s)_{id} - BN(z_t)_{id} |^4
    total  = CE + KL(softmax(z_t) || softmax(z_s)) + 2 * L_rep    (KL at T = 1, batch mean)

As the authors' code (roymiles/Simple-Recipe-Distillation, commit 31e8477,
imagenet/torchdistill/losses/single.py `OurDistillationLoss` with
configs/ilsvrc2012/ours/res3418.yaml): W is nn.Linear(s_dim, t_dim) with bias; the two BNs are
BatchNorm1d(t_dim, eps=1e-4, affine=False) in training mode, so the batch's own statistics; z is
the last stage map averaged over space (kdbench's `Features.pooled`); l_rep carries a factor 2.0,
the logit term a weight 1 at T = 1, CE a weight 1. The repository holds only the ImageNet
(torchdistill) and DeiT code; the defaults are those, as no CIFAR configuration is published.

A batch of one sample has no batch statistics (its normalised features are all zero and the log
of zero diverges); on such a batch the SRD term is 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Features, FeatureShapes, Method, MethodContext, register_method, require_same_classes

BN_EPS = 1e-4  # BatchNorm1d(..., eps=0.0001) in the authors' loss


def batch_standardize(features: Tensor, eps: float = BN_EPS) -> Tensor:
    """BatchNorm without affine parameters in training mode: each feature z-scored over the batch."""
    mean = features.mean(dim=0, keepdim=True)
    variance = features.var(dim=0, keepdim=True, correction=0)
    return (features - mean) / torch.sqrt(variance + eps)


def soft_maximum_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """log sum |BN(student) - BN(teacher)|^4 over the batch and the features."""
    return torch.log((batch_standardize(student) - batch_standardize(teacher)).abs().pow(4).sum())


@register_method
class SRD(Method):
    """Linear projector, batch-normalised pooled features, log-sum-of-4th-powers loss, plus KL at T = 1."""

    name = "srd"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {"ce_weight": 1.0, "kd_weight": 1.0, "method_weight": 2.0, "temperature": 1.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("srd", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.projector = nn.Linear(
            math.prod(context.student_shapes.pooled), math.prod(context.teacher_shapes.pooled)
        )

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        projected = self.projector(student.pooled.flatten(1))
        if len(projected) < 2:  # no batch statistics (module docstring)
            return {"srd": projected.sum() * 0.0}
        with torch.autocast(projected.device.type, enabled=False):  # 4th powers overflow half precision
            return {"srd": soft_maximum_loss(projected.float(), teacher.pooled.flatten(1).float())}
