"""OFD: Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

The distilled features are taken before the ReLU (pre-activation), where the teacher's negative
responses still carry information (paper, Sec. 3). The teacher's feature F_t goes through a margin ReLU and the
student's F_s through a connector r (1x1 conv + BN); the partial L2 distance skips the positions
where the student is already below a non-positive target:

    sigma_m(x) = max(x, m),        m_c = E[ F_t,c | F_t,c < 0 ]   (one margin per teacher channel c)
    T = sigma_m(F_t),  S = r(F_s)
    d_p(T, S) = sum_i  0               if S_i <= T_i <= 0
                       (T_i - S_i)^2   otherwise
    L_OFD = sum_stages d_p(T, S) / 2^(n - 1 - stage) / batch          (deepest stage weight 1)

Margin: the paper computes m_c from the teacher's batch-norm parameters before the ReLU, taking the
response as N(beta_c, gamma_c^2): m_c = beta_c - gamma_c phi(beta_c / gamma_c) / Phi(-beta_c / gamma_c)
(and -3 gamma_c where Phi(-beta / gamma) <= 0.001; mdistiller's OFD.py `get_margin_from_BN`). A kdbench
method sees the teacher's features, not its modules, so the margin here is the same expectation
estimated directly: m_c = mean of the negative entries of channel c of the teacher's pre-activation
over the first training batch (all samples and positions), computed once and kept in a buffer (it
travels with checkpoints); a channel whose negative share is at most 0.001 gets -3 x its standard
deviation, mdistiller's fallback. This is a documented deviation: it measures the pre-ReLU response
itself (for a ResNet, the residual sum, not only the BN output that the paper's Gaussian describes).
Under torchrun the sums are all-reduced, so every rank holds the same margins.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core import distributed

from .base import Features, FeatureShapes, Method, MethodContext, PairNotSupportedError, register_method

MIN_NEGATIVE_SHARE = 0.001  # mdistiller's norm.cdf(-m / s) > 0.001 test, on the measured share


def aligned_stages(student: list, teacher: list) -> tuple[list, list]:
    """The last min(len) stages of each (mdistiller's `_align_list`)."""
    count = min(len(student), len(teacher))
    return list(student[len(student) - count :]), list(teacher[len(teacher) - count :])


def connector(student_channels: int, teacher_channels: int, kernel_size: int) -> nn.Sequential:
    """conv (no bias, He-normal with fan-out) + BN, as mdistiller's `_build_feature_connector`."""
    conv = nn.Conv2d(
        student_channels, teacher_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False
    )
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
    bn = nn.BatchNorm2d(teacher_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def empirical_margin(teacher_preact: Tensor) -> Tensor:
    """m_c = E[x | x < 0] per channel over (N, H, W), or -3 std where at most 0.001 of x is negative.

    Shape (1, C, 1, 1); float32. Sums are all-reduced under torchrun.
    """
    x = teacher_preact.detach().float().transpose(0, 1).flatten(1)  # (C, N*H*W)
    negative = x < 0
    stats = torch.stack(
        [
            torch.where(negative, x, torch.zeros_like(x)).sum(1),
            negative.sum(1).float(),
            x.sum(1),
            x.pow(2).sum(1),
            torch.full_like(x[:, 0], x.shape[1]),
        ]
    )
    if distributed.world_size() > 1:
        dist.all_reduce(stats)
    negative_sum, negative_count, total, total_squares, count = stats
    mean = total / count
    std = (total_squares / count - mean.pow(2)).clamp_min(0).sqrt()
    conditional = negative_sum / negative_count.clamp_min(1)
    margin = torch.where(negative_count / count > MIN_NEGATIVE_SHARE, conditional, -3 * std)
    return margin.view(1, -1, 1, 1)


def partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """d_p(sigma_m(T), S) summed over (C, H, W), averaged over the batch."""
    target = torch.maximum(teacher, margin.to(teacher.dtype))
    counted = (student > target) | (target > 0)
    return ((student - target).pow(2) * counted).sum() / student.shape[0]


@register_method
class OFD(Method):
    """Overhaul of feature distillation: margin-ReLU teacher, connector student, partial L2.

    Features: the pre-activation stage outputs of both networks (`Features.preact`; mdistiller's
    `preact_feats[1:]`), the last min(n_student, n_teacher) stages paired; the teacher's map is
    average-pooled to the student's size (mdistiller does the same). Defaults from mdistiller
    (mdistiller/engine/cfg.py `OFD.LOSS.CE_WEIGHT 1.0`, `FEAT_WEIGHT 0.001`, `CONNECTOR.KERNEL_SIZE 1`;
    configs/cifar100/ofd.yaml), which is the authors' CIFAR code's `loss_distill.sum() / batch_size
    / 1000` (clovaai/overhaul-distillation, CIFAR-100/train_with_distillation.py); no KL term.
    """

    name = "ofd"
    student_features = ("preact",)
    teacher_features = ("preact",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.001, "connector_kernel": 1}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        if teacher_shapes is None or not student_shapes.preact or not teacher_shapes.preact:
            raise PairNotSupportedError(
                "ofd: needs pre-activation stage features from the student and the teacher"
            )
        for role, shapes in (("student", student_shapes.preact), ("teacher", teacher_shapes.preact)):
            if any(len(shape) != 3 for shape in shapes):
                raise PairNotSupportedError(
                    f"ofd: needs (C, H, W) pre-activation maps; the {role} has {shapes}"
                )
        for student, teacher in zip(
            *aligned_stages(student_shapes.preact, teacher_shapes.preact), strict=True
        ):
            if teacher[1] < student[1] or teacher[2] < student[2]:
                raise PairNotSupportedError(
                    f"ofd: pools the teacher's map to the student's size: a {teacher[1]}x{teacher[2]} teacher "
                    f"map cannot be pooled to a {student[1]}x{student[2]} student map"
                )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student, teacher = aligned_stages(context.student_shapes.preact, context.teacher_shapes.preact)
        self.connectors = nn.ModuleList(
            connector(s[0], t[0], hp["connector_kernel"]) for s, t in zip(student, teacher, strict=True)
        )
        for index, shape in enumerate(teacher):
            self.register_buffer(f"margin{index}", torch.zeros(1, shape[0], 1, 1))
        self.register_buffer("margins_set", torch.tensor(False))
        self._margins_known = False  # a host-side copy of margins_set, read once (no device sync per step)

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{index}") for index in range(len(self.connectors))]

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        student_maps, teacher_maps = aligned_stages(student.preact, teacher.preact)
        if not self._margins_known and not bool(self.margins_set):
            for margin, teacher_map in zip(self.margins(), teacher_maps, strict=True):
                margin.copy_(empirical_margin(teacher_map))
            self.margins_set.fill_(True)
        self._margins_known = True
        count, total = len(student_maps), 0.0
        for index, (conn, s, t, margin) in enumerate(
            zip(self.connectors, student_maps, teacher_maps, self.margins(), strict=True)
        ):
            regressed = conn(s)
            target = F.adaptive_avg_pool2d(t.detach(), regressed.shape[-2:])
            total = total + partial_l2(regressed, target, margin) / 2 ** (count - 1 - index)
        return {"ofd": total}
