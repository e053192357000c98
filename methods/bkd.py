"""BKD: binary cross-entropy KD, a logit baseline in the code of Hao et al.'s OFA-KD (NeurIPS 2023).

The code is that of "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
Distillation" (Hao et al., NeurIPS 2023; methods/ofa.py).

Each class is a binary problem whose target is the teacher's softmax probability:

    L_BKD = 1/(N K) sum_{n,k} BCE(sigmoid(z^s_nk), p^t_nk),   p^t = softmax(z^t)

(no temperature). It is the authors' `BKD` distiller (Hao840/OFAKD@f7bb896, distillers/kd.py:
`F.binary_cross_entropy_with_logits(logits_student, logits_teacher.softmax(1))`, the mean over the N x K
entries), the KD counterpart of the binary cross-entropy training loss of timm's recipes (their
train.py --bce-loss). It lives in that repository's code (its README does not mention it); kdbench cites no
published CIFAR-100 row for it.
Defaults from their train.py: --gt-loss-weight 1 (ce_weight), --kd-loss-weight 1 (method_weight).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Features, FeatureShapes, Method, register_method, require_same_classes


def bkd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Binary cross-entropy of each class's sigmoid(z_s) with the teacher's softmax probability."""
    return F.binary_cross_entropy_with_logits(student_logits, teacher_logits.softmax(dim=1))


@register_method
class BKD(Method):
    """Binary KD: per-class BCE of the student's sigmoids with the teacher's softmax."""

    name = "bkd"
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes(cls.name, student_shapes, teacher_shapes)

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return {"bkd": bkd_loss(student.logits, teacher.logits)}
