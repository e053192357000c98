"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

With p = softmax(z / T) and t the target class, the classical KD loss splits into

    b      = [p_t, 1 - p_t]                                 (binary target / non-target)
    p^     = softmax(z_{k != t} / T)                        (distribution among non-targets)
    KD     = KL(b^T || b^S) + (1 - p_t^T) * KL(p^T || p^S)  (the paper's Eq. 1)
           = TCKD           + (1 - p_t^T) * NCKD

and DKD weights the two parts independently of the teacher's confidence:

    DKD = alpha * TCKD + beta * NCKD         (each KL times T^2, averaged over the batch)

log b is computed with logsumexp (log(1 - p_t) = lse(z_{k != t} / T) - lse(z / T)), which is exact
and stable; p^ is the softmax over the non-target logits only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.methods._shared import standardized_pair
from kdbench.methods.base import (
    FeatureShapes,
    Method,
    MethodContext,
    register_method,
    require_same_classes,
    scale_schedule,
)


def binary_log_probs(logits: Tensor, target_mask: Tensor, temperature: float) -> Tensor:
    """log b = log [p_t, 1 - p_t] at temperature T, shape (N, 2)."""
    scaled = logits / temperature
    log_total = scaled.logsumexp(dim=1, keepdim=True)
    log_target = scaled.masked_fill(~target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    log_non_target = scaled.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_target, log_non_target], dim=1) - log_total


def non_target_log_probs(logits: Tensor, target_mask: Tensor, temperature: float) -> Tensor:
    """log p^ = log-softmax over the K - 1 non-target classes at temperature T, shape (N, K - 1)."""
    batch_size, num_classes = logits.shape
    return F.log_softmax(logits[~target_mask].view(batch_size, num_classes - 1) / temperature, dim=1)


def kl_from_log_probs(log_p_student: Tensor, log_p_teacher: Tensor, per_row: bool = False) -> Tensor:
    """KL(teacher || student) summed over classes, averaged over the batch (or one per row)."""
    if per_row:
        return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def decoupled_kd_parts(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, per_row: bool = False
) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each already multiplied by T^2: batch means, or (rows,) each with `per_row`
    (sdd weights its regions' rows)."""
    target_mask = F.one_hot(labels, student_logits.shape[1]).bool()
    tckd = kl_from_log_probs(
        binary_log_probs(student_logits, target_mask, temperature),
        binary_log_probs(teacher_logits, target_mask, temperature),
        per_row,
    )
    nckd = kl_from_log_probs(
        non_target_log_probs(student_logits, target_mask, temperature),
        non_target_log_probs(teacher_logits, target_mask, temperature),
        per_row,
    )
    return tckd * temperature**2, nckd * temperature**2


@register_method
class DKD(Method):
    """Decoupled KD: alpha * TCKD + beta * NCKD, linearly warmed up.

    Defaults from mdistiller (the authors' code, mdistiller/engine/cfg.py): CE weight 1.0,
    alpha 1.0, beta 8.0, T 4.0, warm-up 20 epochs (the DKD loss is scaled by
    min(epoch / warmup, 1), epochs counted from 1). beta is tuned per pair in mdistiller's
    configs/cifar100/dkd/*.yaml: 2.0 for resnet56->resnet20 and resnet110->resnet32; 6.0 for
    wrn_40_2->wrn_16_2, wrn_40_2->wrn_40_1, vgg13->vgg8 and vgg13->MobileNetV2; 8.0 elsewhere.

    Warm-up on shorter runs: the 20 epochs belong to a 240-epoch schedule, so for a run of
    E < 240 epochs kdbench ramps over 20 * E / 240 epochs (same fraction of training); runs of
    240 epochs or more use the published 20. Until the engine calls `set_epoch` the ramp is 1.

    `logit_std=true` z-scores both logit vectors first (Sun et al., CVPR 2024, methods/_shared.py);
    `temperature` then acts as the paper's base temperature.
    """

    name = "dkd"
    fuses = True
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "alpha": 1.0,
        "beta": 8.0,
        "warmup_epochs": 20,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("dkd", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.warmup_factor = 1.0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        warmup_epochs = scale_schedule(self.hp["warmup_epochs"], num_epochs)
        self.warmup_factor = min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        student_logits, teacher_logits = standardized_pair(
            student.logits, teacher.logits, self.hp["logit_std"]
        )
        tckd, nckd = decoupled_kd_parts(student_logits, teacher_logits, labels, self.hp["temperature"])
        return {
            "dkd_tckd": self.warmup_factor * self.hp["alpha"] * tckd,
            "dkd_nckd": self.warmup_factor * self.hp["beta"] * nckd,
        }
