"""ICKD: Liu, Cao, Li, Yuan, Hu, Li & Zhang, "Exploring Inter-Channel Correlation for
Diversity-preserved Knowledge Distillation", ICCV 2021.

The student learns the teacher's inter-channel correlation: how alike every two channels of the
last feature map are. With F (C x HW) a sample's map flattened over space, after a 1x1 conv + BN
embedding of the student's map into the teacher's channel count C,

    G(F)     = F F^T                                          (C x C Gram matrix of the channels)
    G~(F)    = G(F) with each row L2-normalised
    L_ICKD   = 1 / (b C) sum_i || G~(F_s,i) - G~(F_t,i) ||_F^2

As the authors' CIFAR-100 code (ADLab-AutoDrive/ICKD at 403b8d3d7c3aaa429e4708870d2be1d4daf92f07,
Cifar100/distiller_zoo/ICKD.py `ICKDLoss`, helper/loops.py, train_student.py): the maps are
RepDistiller's `feat[-2]`, the last stage's output before pooling (kdbench's `Features.stages[-1]`);
the embedding is `Embed`, conv1x1 (C_s -> C_t, no bias) - BN2d; no grid partition (the paper's
ICKD-C on CIFAR). Their code also builds a teacher-side `embed_t` that the loss never calls; kdbench
leaves it out (it trains nothing). The Gram matrices are C x C whatever the maps' spatial sizes, so
those need not agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_stages,
)


def channel_embedding(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The authors' `Embed`: conv1x1 (C_s -> C_t, no bias) then BN2d."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(teacher_channels),
    )


def normalized_channel_gram(feature_map: Tensor) -> Tensor:
    """(N, C, C): each sample's channel Gram matrix F F^T, every row L2-normalised; in float32 even under
    autocast, where fp16's sums of H x W products overflow."""
    flat = feature_map.flatten(2).float()
    with torch.autocast(flat.device.type, enabled=False):
        gram = torch.bmm(flat, flat.transpose(1, 2))
    return F.normalize(gram, dim=2)


def inter_channel_loss(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """sum_i ||G~_s,i - G~_t,i||_F^2 / (N C), for maps of the same channel count C."""
    batch, channels = student_map.shape[:2]
    difference = normalized_channel_gram(student_map) - normalized_channel_gram(teacher_map.detach())
    return difference.pow(2).sum() / (batch * channels)


@register_method
class ICKD(Method):
    """Inter-channel correlation: the student's channel Gram matrix (after a 1x1 embedding) matches the teacher's.

    Defaults from the authors' CIFAR-100 README and scripts/run_cifar_distill.sh (ADLab-AutoDrive/ICKD
    at 403b8d3): ICKD `-r 1 -a 0 -b 2.5` (CE 1, no KD, ICKD weight 2.5; the "ICKD-C (w/o KL)" row);
    their "ICKD-C" row adds KL with `-a 1`, which is kdbench's `ickd+kd` (at `--kd_T 4`).
    """

    name = "ickd"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 2.5, "temperature": 4.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_stages("ickd", student_shapes, teacher_shapes)
        if len(student_shapes.stages[-1]) != 3 or len(teacher_shapes.stages[-1]) != 3:
            raise PairNotSupportedError(
                f"ickd correlates the channels of (C, H, W) maps: the last stage outputs are "
                f"{student_shapes.stages[-1]} (student) and {teacher_shapes.stages[-1]} (teacher)"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student_channels = context.student_shapes.stages[-1][0]
        teacher_channels = context.teacher_shapes.stages[-1][0]
        self.embed = channel_embedding(student_channels, teacher_channels)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return {"ickd": inter_channel_loss(self.embed(student.stages[-1]), teacher.stages[-1])}
