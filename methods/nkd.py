"""NKD: Yang, Zeng, Yuan & Li, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
Approach with Normalized Loss and Customized Soft Labels", ICCV 2023.

KD's soft cross-entropy splits into a target part and a non-target part whose probabilities do not
sum to one; the non-target part's weight then depends on the target's probability. Normalized KD
(NKD) renormalises the non-target probabilities before matching them, with t the label,
T / S the teacher's / student's distributions and N(.) the distribution over the K - 1 non-target
classes:

    L_NKD = - T_t log S_t  -  gamma * lambda^2 * sum_{i != t} N(T_i^lambda) log N(S_i^lambda)

where T_t, S_t are at temperature 1 and N(T^lambda) = softmax over the non-target logits divided
by lambda (the non-target probabilities at temperature lambda, renormalised). Both parts are
averaged over the batch; the teacher's T_t carries no gradient. As the authors' code (yzd-v/cls_KD
at 1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66, mmcls/models/dis_losses/nkd.py `NKDLoss`), the total
loss is the student's CE plus L_NKD, which replaces KD's term.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Features, FeatureShapes, Method, register_method, require_same_classes


def non_target_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """The (N, K - 1) logits of each row without its label's."""
    batch, classes = logits.shape
    keep = F.one_hot(labels, classes).logical_not()
    return logits[keep].view(batch, classes - 1)


def normalized_kd(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, gamma: float
) -> Tensor:
    """-mean_i T_t log S_t  -  gamma * lambda^2 * mean_i sum_{k != t} N(T^lambda)_k log N(S^lambda)_k."""
    teacher_logits = teacher_logits.detach()
    target = labels.unsqueeze(1)
    log_student_target = F.log_softmax(student_logits, dim=1).gather(1, target)
    teacher_target = F.softmax(teacher_logits, dim=1).gather(1, target)
    target_loss = -(teacher_target * log_student_target).mean()
    log_student_rest = F.log_softmax(non_target_logits(student_logits, labels) / temperature, dim=1)
    teacher_rest = F.softmax(non_target_logits(teacher_logits, labels) / temperature, dim=1)
    non_target_loss = -(teacher_rest * log_student_rest).sum(dim=1).mean()
    return target_loss + gamma * temperature**2 * non_target_loss


@register_method
class NKD(Method):
    """Normalized KD: the teacher's target probability weights the target, non-targets matched renormalised.

    Defaults from the authors' CIFAR-100 config (yzd-v/cls_KD at 1e5d48f,
    configs/distillers/cifar100/res34_distill_res18_cifar.py: `NKDLoss(temp=3.0, gamma=3.5)`, the CE of
    the student's head at weight 1): lambda (`temperature`) 3, gamma 3.5, CE weight 1, no KD term.
    Their ImageNet configs use temp 1.0 and gamma 1.5 (configs/distillers/imagenet/*_distill_*.py).
    """

    name = "nkd"
    fuses = True
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "temperature": 3.0, "gamma": 3.5}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("nkd", student_shapes, teacher_shapes)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        hp = self.hp
        return {"nkd": normalized_kd(student.logits, teacher.logits, labels, hp["temperature"], hp["gamma"])}
