"""CRLD: Zhang, Liu, Cai & Ma, "Cross-View Consistency Regularisation for Knowledge Distillation",
ACM MM 2024 (arXiv 2412.16493).

Each batch is seen in a weak view w (the standard crop and flip) and a strong view s (RandAugment);
the student matches the teacher within each view and across the two views, and only where the
teacher is confident enough (confidence-based soft label mining; paper, Sec. 3):

    KL_T(a, b)_i = T^2 * KL(softmax(z_b,i^T / T) || softmax(z_a,i^S / T))        (per sample)
    m^w_i = [max_k softmax(z_w,i^T)_k >= tau_w],   m^s_i = [max_k softmax(z_s,i^T)_k >= tau_s]
    L_wv  = 1/B sum_i m^w_i (KL_T(w, w)_i + KL_T(s, s)_i)       within-view
    L_cv  = 1/B sum_i m^s_i (KL_T(s, w)_i + KL_T(w, s)_i)       cross-view: student view, teacher view
    total = ce_weight * (CE(z_w^S, y) + CE(z_s^S, y)) + within_weight * L_wv + cross_weight * L_cv

The confidences are the teacher's softmax at T = 1; a sample left out by its mask still counts in
the batch mean B (the code multiplies by the 0/1 mask, then averages over the batch).

Defaults from the authors' code: mdistiller/distillers/CRLD.py and the CRLD node of
mdistiller/engine/cfg.py (CE_WEIGHT 1.0, WV_WEIGHT 2.0, CV_WEIGHT 0.5, TEMPERATURE 4.0, TAU_W 0.9,
TAU_S 0.2), which configs/cifar100/crld/*.yaml do not override. The authors' repository
(arcaninez/crld) could not be read here; these files were read in scx-822/CRLD-main, commit
c9d6657, a copy of it that later adds its own variant (configs/cifar100/crld_proto) beside the
original files. Its strong view (mdistiller/dataset/cifar100.py, `RandAugment(2, 10)` with Cutout
after the crop and flip) is MLKD's, kdbench's "strong" view (kdbench/data/views.py), which the
engine draws because the method declares it (`extra_views`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._parts import StrongViewMethod
from .base import FeatureShapes, register_method, require_same_classes


def per_sample_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(B,) T^2 KL(softmax(teacher / T) || softmax(student / T)), one value per sample."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1) * temperature**2


def confident(teacher_logits: Tensor, threshold: float) -> Tensor:
    """(B,) 1.0 where the teacher's top softmax probability (T = 1) is at least `threshold`, else 0.0."""
    return (F.softmax(teacher_logits.float(), dim=1).max(dim=1).values >= threshold).float()


@register_method
class CRLD(StrongViewMethod):
    """Within-view and cross-view KL over a weak and a strong view, masked by the teacher's confidence."""

    name = "crld"
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "within_weight": 2.0,
        "cross_weight": 0.5,
        "tau_weak": 0.9,
        "tau_strong": 0.2,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("crld", student_shapes, teacher_shapes)

    def method_terms(self, student, teacher, labels, indices, views=None) -> dict[str, Tensor]:
        strong_student, strong_teacher = views["strong"]
        weak_s, weak_t = student.logits, teacher.logits.detach()
        strong_s, strong_t = strong_student.logits, strong_teacher.logits.detach()
        temperature = self.hp["temperature"]
        with torch.no_grad():
            weak_mask = confident(weak_t, self.hp["tau_weak"])
            strong_mask = confident(strong_t, self.hp["tau_strong"])
        within = per_sample_kd(weak_s, weak_t, temperature) + per_sample_kd(strong_s, strong_t, temperature)
        cross = per_sample_kd(strong_s, weak_t, temperature) + per_sample_kd(weak_s, strong_t, temperature)
        return {
            "crld_within": self.hp["within_weight"] * (within * weak_mask).mean(),
            "crld_cross": self.hp["cross_weight"] * (cross * strong_mask).mean(),
        }
