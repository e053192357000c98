"""MLKD: Jin, Wang & Lin, "Multi-level Logit Distillation", CVPR 2023.

The student's and the teacher's predictions p = softmax(z / T) are aligned at three levels, each at
several temperatures T ("prediction augmentation"), on a weakly and a strongly augmented view of
each batch (paper, Sec. 3):

    instance  L_ins(T)   = T^2 * 1/B sum_i KL(p_i^t || p_i^s)                    (Hinton's KD)
    batch     L_batch(T) = 1/B || G^t - G^s ||_F^2,   G = P P^T  (B x B sample similarities)
    class     L_class(T) = 1/C || M^t - M^s ||_F^2,   M = P^T P  (C x C class correlations)

with P the (B, C) matrix of predictions. As the authors' code (Jin-Ying/Multi-Level-Logit-
Distillation, mdistiller/distillers/KD_ours.py, on mdistiller's cfg.py defaults):
- T in {4, 3, 5, 2, 6} (4 = cfg.KD.TEMPERATURE, the others written in the code);
- CE on both views: ce_weight * (CE(z_weak, y) + CE(z_strong, y));
- the weak-view terms are gated by the teacher's confidence on the weak view: a sample counts
  when its max softmax probability is at most the batch's median, a class when its summed
  probability over the batch is at most the classes' median. The code multiplies the batch-mean
  loss by the 0/1 mask and averages it, which scales the term by the fraction of samples (or
  classes) gated in, about 1/2; kdbench computes that same value (`gated_fraction`);
- returned terms: instance level on both views (strong view unmasked), batch and class level on
  the weak view only (the code computes strong-view batch / class terms but leaves them out of
  the loss); every distillation term weighted by cfg.KD.LOSS.KD_WEIGHT = 0.9.

    total = ce_weight * (CE_weak + CE_strong)
          + method_weight * sum_T [ m * L_ins^weak(T) + L_ins^strong(T) + c * L_class^weak(T) + m * L_batch^weak(T) ]

(m, c the sample and class gated fractions). One deviation: the code's strong-view instance terms at
T = 2 and 6 read the weak view's logits (a copy-paste slip in KD_ours.py); kdbench uses the strong
view at every temperature, as the paper describes.

The strong view is a method-declared extra view (`extra_views = ("strong",)`): the engine draws it
with kdbench/data/views.py's `augment_views` (the standard crop / flip drawn anew, then FixMatch-style
RandAugment with 2 ops and Cutout, the strong pipeline of the authors' mdistiller fork), and runs the
student and the frozen teacher on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._parts import StrongViewMethod
from .base import FeatureShapes, kd_kl_div, register_method, require_same_classes

# cfg.KD.TEMPERATURE (the `temperature` hp) first, then those written in KD_ours.py
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def batch_level(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """1/B ||P_t P_t^T - P_s P_s^T||_F^2 at temperature T (the code's bc_loss)."""
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def class_level(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """1/C ||P_t^T P_t - P_s^T P_s||_F^2 at temperature T (the code's cc_loss)."""
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]


def gated_fraction(scores: Tensor) -> Tensor:
    """The fraction of `scores` at or below their median (numpy's linear-interpolated 50th percentile)."""
    return (scores <= torch.quantile(scores.float(), 0.5)).float().mean()


@register_method
class MLKD(StrongViewMethod):
    """Instance-, batch- and class-level logit alignment at five temperatures, weak + strong views.

    Defaults from the authors' code (Jin-Ying/Multi-Level-Logit-Distillation, KD_ours.py and
    mdistiller/engine/cfg.py): CE weight 0.1 (on each view), distillation weight 0.9 on every term,
    T = 4 plus 3, 5, 2, 6. Their CIFAR recipe (configs/cifar100/ours/*.yaml: batch 64, lr 0.025
    (0.01 for MobileNet / ShuffleNet students), weight decay 5e-4, 240 epochs) is kdbench's shared
    recipe's business.
    """

    name = "mlkd"
    defaults = {"ce_weight": 0.1, "kd_weight": 0.0, "method_weight": 0.9, "temperature": 4.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("mlkd", student_shapes, teacher_shapes)

    def temperatures(self) -> tuple[float, ...]:
        return (self.hp["temperature"], *EXTRA_TEMPERATURES)

    def method_terms(self, student, teacher, labels, indices, views=None) -> dict[str, Tensor]:
        strong_student, strong_teacher = views["strong"]
        weak_s, weak_t = student.logits, teacher.logits
        strong_s, strong_t = strong_student.logits, strong_teacher.logits
        with torch.no_grad():
            p_teacher = F.softmax(weak_t.float(), dim=1)
            samples = gated_fraction(p_teacher.max(dim=1).values)
            classes = gated_fraction(p_teacher.sum(dim=0))
        instance = batch = klass = 0.0
        for temperature in self.temperatures():
            instance = (
                instance
                + samples * kd_kl_div(weak_s, weak_t, temperature)
                + kd_kl_div(strong_s, strong_t, temperature)
            )
            batch = batch + samples * batch_level(weak_s, weak_t, temperature)
            klass = klass + classes * class_level(weak_s, weak_t, temperature)
        return {"mlkd_instance": instance, "mlkd_batch": batch, "mlkd_class": klass}
