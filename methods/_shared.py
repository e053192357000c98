"""Loss code several methods share; not a method (nothing here registers).

Logit standardisation: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.
Instead of sharing one temperature between teacher and student, each logit vector z (of K
classes) is z-scored with its own mean and standard deviation before the temperature softmax:

    Z(z) = (z - mean(z)) / std(z),      std(z) = sqrt(1/K * sum_k (z_k - mean(z))^2)
    p    = softmax(Z(z) / tau)

so the effective temperature of each sample is tau * std(z) and the student only has to match
the teacher's logit *relations*, not their range. `tau` is what the paper calls the base
temperature; kdbench passes the method's `temperature` hyper-parameter as tau and keeps the
T^2 gradient factor of the KL term (as the authors' code does). Every logit-level method takes it
as the shared hyper-parameter `logit_std` (methods/base.py; kd, dist, dkd, ctkd, sdd read it
through `standardized_pair`).

Hyper-parameters of the paper's CIFAR-100 runs (README and tools/train.py of
github.com/sunshangquan/logit-standardization-KD): base temperature 2 (3 for a few pairs) and a
KD weight of 9 next to CE weight 1, i.e. for kd `--hp kd.logit_std=true --hp kd.temperature=2
--hp kd.kd_weight=9 --hp kd.ce_weight=1`. Turning `logit_std` on changes no other default.

The standard deviation is the paper's (1/K, no Bessel correction); the authors' code uses
torch's default unbiased std, which scales the effective temperature by sqrt(K / (K - 1)).

Feature projection: the convolutional bottleneck that maps a student's feature map onto a
teacher's (SimKD's projector, SemCKD's AAEmbed: DefangChen/SimKD and DefangChen/SemCKD,
models/util.py) and the authors' rule for two maps of different spatial sizes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

STD_EPS = 1e-7  # as in the authors' code: keeps a constant logit vector finite


def standardize_logits(logits: Tensor) -> Tensor:
    """Z-score each row of `logits` (N, K): zero mean, unit (population) standard deviation."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, correction=0)
    return (logits - mean) / (std + STD_EPS)


def standardized_pair(
    student_logits: Tensor, teacher_logits: Tensor, logit_std: bool
) -> tuple[Tensor, Tensor]:
    """(student, teacher) logits, both z-scored when the method's `logit_std` hyper-parameter is on."""
    if not logit_std:
        return student_logits, teacher_logits
    return standardize_logits(student_logits), standardize_logits(teacher_logits)


class ConvProjector(nn.Sequential):
    """conv1x1 (C_in -> C_mid) - BN - ReLU - conv3x3 (C_mid -> C_mid) - BN - ReLU - conv1x1 (C_mid -> C_out),
    followed by BN - ReLU when `normalized_output` (SimKD's projector has them, SemCKD's AAEmbed not)."""

    def __init__(self, in_channels: int, middle: int, out_channels: int, *, normalized_output: bool):
        layers = [
            nn.Conv2d(in_channels, middle, 1, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(),
            nn.Conv2d(middle, middle, 3, padding=1, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(),
            nn.Conv2d(middle, out_channels, 1, bias=False),
        ]
        if normalized_output:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU()]
        super().__init__(*layers)


def align_spatially(student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
    """The larger of the two maps average-pooled to the smaller's size (the authors' rule)."""
    if student_map.shape[-1] > teacher_map.shape[-1]:
        return F.adaptive_avg_pool2d(student_map, teacher_map.shape[-2:]), teacher_map
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        return student_map, F.adaptive_avg_pool2d(teacher_map, student_map.shape[-2:])
    return student_map, teacher_map
