"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

VID maximises a variational lower bound on the mutual information between teacher and student
features: the teacher feature t is modelled as a Gaussian whose mean mu(s) is regressed from the
student feature s and whose variance sigma_c^2 is one learned number per teacher channel c:

    -log q(t | s) = sum_{c,h,w} [ log sigma_c + (t_chw - mu_chw(s))^2 / (2 sigma_c^2) ] + const
    sigma_c^2     = softplus(alpha_c) + eps

kdbench averages the summand over elements instead of summing (the scale RepDistiller's beta = 1
belongs to, distiller_zoo/VID.py, code of the VID authors). When the spatial sizes differ, the
larger map is average-pooled to the smaller one first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import (
    FeatureShapes,
    Method,
    MethodContext,
    register_method,
    require_paired_stages,
)

VARIANCE_EPS = 1e-5  # RepDistiller's / mdistiller's eps: keeps sigma^2 away from 0


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


class VariationalRegressor(nn.Module):
    """mu(s): three 1x1 convolutions (student -> teacher channels), plus one variance per channel."""

    def __init__(self, student_channels: int, teacher_channels: int, init_pred_var: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
        )
        # alpha such that softplus(alpha) + eps == init_pred_var at the start
        initial_alpha = math.log(math.expm1(init_pred_var - VARIANCE_EPS))
        self.alpha = nn.Parameter(torch.full((teacher_channels,), initial_alpha))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + VARIANCE_EPS

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Mean over elements of the Gaussian negative log-likelihood of `teacher` (constant dropped)."""
        student, teacher = pool_to_common_size(student, teacher)
        variance = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((teacher - self.mean(student)) ** 2 / variance + variance.log())).mean()


@register_method
class VID(Method):
    """Variational information distillation on every stage output.

    Features: RepDistiller (Tian et al., ICLR 2020) applies one VIDLoss per entry of `feat[1:-1]`
    of its list [stem, stage_1, ..., stage_n, pooled], i.e. `Features.stages` here
    (post-activation), with `VIDLoss(s_channels, t_channels, t_channels)` (hidden width = teacher
    channels) and init_pred_var 5.0; the per-stage losses are summed. Defaults: RepDistiller's
    scripts/run_cifar_distill.sh, `--distill vid -r 1 -a 0 -b 1`.
    """

    name = "vid"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "init_pred_var": 5.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_paired_stages("vid", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        stage_pairs = zip(context.student_shapes.stages, context.teacher_shapes.stages, strict=True)
        self.regressors = nn.ModuleList(
            VariationalRegressor(student_shape[0], teacher_shape[0], hp["init_pred_var"])
            for student_shape, teacher_shape in stage_pairs
        )

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        pairs = zip(self.regressors, student.stages, teacher.stages, strict=True)
        return {"vid": sum(regressor(s, t) for regressor, s, t in pairs)}
