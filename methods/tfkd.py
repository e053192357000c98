"""Tf-KD: Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via Label Smoothing
Regularization", CVPR 2020.

KD acts as a learned label smoothing, so a student can be regularised without any teacher by a
manually designed "virtual teacher" that is right with probability a and uniform elsewhere
(paper, Sec. 5, Tf-KD_reg), softened by a temperature:

    p^d(k)     = a                if k = y,      (1 - a) / (K - 1)   otherwise        (a = 0.99)
    p^d_tau    = softmax(p^d / tau)
    L_Tf-KD    = (1 - alpha) * CE(z, y)  +  alpha * m * KL(p^d_tau || softmax(z)) / K

kdbench follows the authors' code (yuanli2333/Teacher-free-Knowledge-Distillation at
d000ab378a409535a5f5f645b473e05e27529a02, my_loss_function.py `loss_kd_regularization`), which is
what their CIFAR-100 numbers were trained with, where it differs from the paper's equation: the
temperature divides the virtual teacher's probabilities (softmax of p^d / tau, not of logits), the
student's distribution is not tempered, the KL is `nn.KLDivLoss()`'s element-wise mean over the
N x K entries (hence the 1 / K above, in place of the paper's tau^2), and the multiplier m of the
params.json files rescales it. In kdbench's weights, `ce_weight` is 1 - alpha and `method_weight`
is alpha * m; the method term is the KL / K alone.

The method needs no teacher: `needs_teacher` is False, as the `student` baseline's (methods/student.py).

`tfkd_self` is the paper's other teacher-free variant, self-training (Tf-KD_self, Sec. 5): the student's
own architecture, trained alone first, teaches it by KD. As the authors' `loss_kd_self`, with the
same element-wise mean:

    L_self = (1 - alpha) * CE(z_s, y)  +  alpha * m * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) / K

It is run on a pair whose teacher is the student's model (e.g. resnet8 teaching resnet8), which
kdbench trains alone as every teacher; it refuses a teacher whose feature shapes differ from the
student's (equal shapes are necessary, not sufficient, for the same architecture).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.core.errors import ConfigError

from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_same_classes,
)


def virtual_teacher(labels: Tensor, num_classes: int, correct_prob: float, temperature: float) -> Tensor:
    """softmax(p^d / tau) (N, K): p^d is `correct_prob` on the label and uniform over the other classes."""
    uniform = (1 - correct_prob) / (num_classes - 1)
    hand_designed = F.one_hot(labels, num_classes) * (correct_prob - uniform) + uniform
    return F.softmax(hand_designed / temperature, dim=1)


def teacher_free_kl(
    student_logits: Tensor, labels: Tensor, correct_prob: float, temperature: float
) -> Tensor:
    """KL(p^d_tau || softmax(z)) summed over classes and samples, divided by N * K (the authors' mean)."""
    target = virtual_teacher(labels, student_logits.shape[1], correct_prob, temperature)
    log_student = F.log_softmax(student_logits, dim=1)
    return F.kl_div(log_student, target, reduction="sum") / student_logits.numel()


@register_method
class TfKD(Method):
    """Teacher-free KD: a hand-designed virtual teacher (right with probability 0.99, softened) as regulariser.

    Defaults from the authors' CIFAR-100 ResNet18 run (yuanli2333/Teacher-free-Knowledge-Distillation at
    d000ab3, experiments/base_experiments/base_resnet18/params.json with `--regularization`):
    reg_alpha 0.1, reg_temperature 20, multiplier 100, so CE weight 0.9, method weight 10, temperature 20;
    a = 0.99 (`correct_prob`, fixed in my_loss_function.py). Their other students use (alpha, tau, m)
    = (0.95, 40, 1) for MobileNetV2, (0.95, 10, 1) for ShuffleNetV2, (0.1, 40, 50) for GoogLeNet.
    """

    name = "tfkd"
    needs_teacher = False
    defaults = {
        "ce_weight": 0.9,
        "kd_weight": 0.0,
        "method_weight": 10.0,
        "temperature": 20.0,
        "correct_prob": 0.99,
    }

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        if not 0 < hp["correct_prob"] < 1:
            raise ConfigError(f"tfkd.correct_prob={hp['correct_prob']}: takes a probability between 0 and 1")
        if hp["temperature"] <= 0:
            raise ConfigError(f"tfkd.temperature={hp['temperature']}: takes a number above 0")

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        hp = self.hp
        return {"tfkd": teacher_free_kl(student.logits, labels, hp["correct_prob"], hp["temperature"])}


def self_training_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) summed over classes and samples, divided by N * K."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    soft_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return temperature**2 * F.kl_div(log_student, soft_teacher, reduction="sum") / student_logits.numel()


@register_method
class TfKDSelf(Method):
    """Tf-KD self-training: the student's own architecture, trained alone first, teaches it by KD.

    Defaults from the authors' CIFAR-100 ResNet18 self-training run (yuanli2333/Teacher-free-Knowledge-
    Distillation at d000ab3, experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json
    with `--self_training`): alpha 0.95, temperature 6, multiplier 50, so CE weight 0.05 and method
    weight 47.5. MobileNetV2's run uses alpha 0.95, T 20, m 1 (mobilenet_self_teacher/params.json).
    """

    name = "tfkd_self"
    defaults = {"ce_weight": 0.05, "kd_weight": 0.0, "method_weight": 47.5, "temperature": 6.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("tfkd_self", student_shapes, teacher_shapes)
        differing = [
            f"{field} {getattr(teacher_shapes, field)} (student {getattr(student_shapes, field)})"
            for field in ("stem", "stages", "preact", "pooled")
            if getattr(teacher_shapes, field) != getattr(student_shapes, field)
        ]
        if differing:
            raise PairNotSupportedError(
                "tfkd_self is self-training: its teacher is the student's own model, trained alone; this "
                f"teacher's features differ: {'; '.join(differing)}"
            )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return {"tfkd_self": self_training_kl(student.logits, teacher.logits, self.hp["temperature"])}
