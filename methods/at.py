"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

The spatial attention map of a feature A (C x H x W) is F(A) = sum_c |A_c|^p (paper, Sec. 3.1, p = 2);
its flattened, l2-normalised version Q = vec(F(A)) / ||vec(F(A))|| is compared between student and
teacher at every stage j:

    L_AT = sum_j mean((Q_s^j - Q_t^j)^2)

which is the authors' code (szagoruyko/attention-transfer: channel mean instead of sum, which the
normalisation cancels; squared difference averaged over batch and positions; summed over the groups)
and RepDistiller's (Tian et al., ICLR 2020, distiller_zoo/AT.py) on its feat[1:-1], i.e. our
`Features.stages`. Where a student and a teacher stage differ in spatial size, RepDistiller average-pools
the larger feature to the smaller size first; kdbench does the same. Defaults from RepDistiller's
scripts/run_cifar_distill.sh: `--distill attention -a 0 -b 1000`; p = 2 (paper and both codes).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Features, FeatureShapes, Method, PairNotSupportedError, register_method


def attention_map(feature: Tensor, p: float) -> Tensor:
    """Q = normalise(vec(mean_c |A_c|^p)), shape (N, H * W)."""
    return F.normalize(feature.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student_feature: Tensor, teacher_feature: Tensor, p: float) -> Tensor:
    """mean((Q_s - Q_t)^2) for one stage, the larger feature average-pooled to the smaller size."""
    common_size = (
        min(student_feature.shape[2], teacher_feature.shape[2]),
        min(student_feature.shape[3], teacher_feature.shape[3]),
    )
    student_map = attention_map(F.adaptive_avg_pool2d(student_feature, common_size), p)
    teacher_map = attention_map(F.adaptive_avg_pool2d(teacher_feature, common_size), p)
    return (student_map - teacher_map).pow(2).mean()


@register_method
class AT(Method):
    """Attention transfer on every stage output, stages paired one to one."""

    name = "at"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1000.0, "p": 2.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        student_stages, teacher_stages = student_shapes.stages, teacher_shapes.stages
        if len(student_stages) != len(teacher_stages) or not student_stages:
            raise PairNotSupportedError(
                f"at: the student has {len(student_stages)} stages and the teacher {len(teacher_stages)}; "
                "attention transfer pairs stage outputs one to one, so both need the same number of stages"
            )
        for role, stages in (("student", student_stages), ("teacher", teacher_stages)):
            not_spatial = [shape for shape in stages if len(shape) != 3]
            if not_spatial:
                raise PairNotSupportedError(
                    f"at: the {role} has stage outputs of shape {not_spatial[0]}, not (C, H, W); "
                    "an attention map needs a spatial feature map"
                )

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        stage_losses = [
            attention_transfer_loss(student_feature, teacher_feature, self.hp["p"])
            for student_feature, teacher_feature in zip(student.stages, teacher.stages, strict=True)
        ]
        return {"at": sum(stage_losses)}
