"""ReviewKD: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

The student's features are "reviewed" from the deepest level to the shallowest: at each level an
attention-based fusion (ABF) module mixes the level's feature with the fused feature of the level
below, using two spatial attention maps predicted from both, and projects the result to the
teacher's feature shape. The hierarchical context loss (HCL) compares each projected feature with
the teacher's, at full resolution and pooled to 4x4, 2x2 and 1x1 (coarser than the map only):

    HCL(F_s, F_t) = sum_k w_k * MSE(pool_k(F_s), pool_k(F_t)) / sum_k w_k,   w = 1, 1/2, 1/4, 1/8

summed over levels. As the authors' CIFAR code (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py
and train.py), the levels are the student's stage outputs (post-activation) plus its pooled vector
as a 1x1 map, against the teacher's pre-activation stage features plus its pooled vector, and the
loss is warmed up linearly over the first 20 epochs: weight min(1, (epoch - 1) / 20), 1-based.

Defaults: review loss weight 1.0 (train.py `--kd-loss-weight`; the authors' script/reviewKD.sh sets
5.0 for the wrn_40_2 teacher and for resnet32x4 -> resnet8x4 / ShuffleV1, 8.0 for resnet32x4 ->
ShuffleV2, 0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32: per-pair overrides),
`--kd-warm-up 20`, CE weight 1, no KL term; the ABF middle width is min(512, the student's pooled
channels). Simplifications: the levels are built from the probed feature shapes rather than the
authors' per-architecture tables, so a pair is served only when the student has as many stages as
the teacher has pre-activation stages; runs use kdbench's shared recipe, not the authors' (lr 0.1,
Nesterov, batch 128).
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
    scale_schedule,
)

MAX_MID_CHANNELS = 512
CONTEXT_SIZES = (4, 2, 1)


def hierarchical_context_loss(student_pyramid: list[Tensor], teacher_pyramid: list[Tensor]) -> Tensor:
    """HCL summed over levels: full-resolution MSE plus MSEs of coarser pooled maps, weight halving."""
    total = 0.0
    for student, teacher in zip(student_pyramid, teacher_pyramid, strict=True):
        loss, weight, weight_sum = F.mse_loss(student, teacher), 1.0, 1.0
        for size in CONTEXT_SIZES:
            if size >= student.shape[-2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)
            )
            weight_sum += weight
        total = total + loss / weight_sum
    return total


class AttentionBasedFusion(nn.Module):
    """ABF: 1x1 conv to the middle width, attention-weighted sum with the deeper level's fused
    feature (absent at the deepest level), resize to the teacher's map, 3x3 conv to its channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.project = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(
        self, feature: Tensor, deeper: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Return (projection compared with the teacher, fused feature handed to the next level)."""
        fused = self.reduce(feature)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=fused.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([fused, deeper], dim=1))
            fused = fused * weights[:, :1] + deeper * weights[:, 1:]
        if fused.shape[-2:] != out_size:
            fused = F.interpolate(fused, size=out_size, mode="nearest")
        return self.project(fused), fused


def as_map(pooled: Tensor) -> Tensor:
    return pooled.reshape(pooled.shape[0], -1, 1, 1)


@register_method
class ReviewKD(Method):
    """Knowledge review: ABF modules on the student's feature pyramid + HCL to the teacher's."""

    name = "reviewkd"
    student_features = ("stages", "pooled")
    teacher_features = ("preact", "pooled")
    defaults = {"kd_weight": 0.0, "method_weight": 1.0, "warmup_epochs": 20}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        student, teacher = student_shapes.stages, teacher_shapes.preact
        if not student or len(student) != len(teacher):
            raise PairNotSupportedError(
                f"reviewkd: needs as many student stages as teacher pre-activation stages "
                f"(student {len(student)}, teacher {len(teacher)})"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student, teacher = context.student_shapes, context.teacher_shapes
        # Levels ordered deepest first: the pooled vector as a 1x1 map, then the stages backwards.
        in_channels = [student.pooled[0]] + [shape[0] for shape in reversed(student.stages)]
        teacher_levels = [(teacher.pooled[0], 1, 1)] + list(reversed(teacher.preact))
        mid_channels = min(MAX_MID_CHANNELS, student.pooled[0])
        self.fusions = nn.ModuleList(
            AttentionBasedFusion(channels, mid_channels, level[0], fuse=depth > 0)
            for depth, (channels, level) in enumerate(zip(in_channels, teacher_levels, strict=True))
        )
        self.teacher_sizes = [tuple(level[1:]) for level in teacher_levels]
        self.warmup_factor = 1.0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        # The authors' ramp epoch/20 with 0-based epochs; the 20 shrinks with a shorter run.
        warmup = scale_schedule(self.hp["warmup_epochs"], num_epochs)
        self.warmup_factor = min(1.0, (epoch - 1) / warmup) if warmup else 1.0

    def review(self, student: Features) -> list[Tensor]:
        """The student's projected pyramid, deepest level first."""
        levels = [as_map(student.pooled)] + list(reversed(student.stages))
        projections, fused = [], None
        for feature, fusion, out_size in zip(levels, self.fusions, self.teacher_sizes, strict=True):
            projection, fused = fusion(feature, fused, out_size)
            projections.append(projection)
        return projections

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        teacher_pyramid = [as_map(teacher.pooled)] + list(reversed(teacher.preact))
        return {
            "reviewkd": self.warmup_factor * hierarchical_context_loss(self.review(student), teacher_pyramid)
        }
