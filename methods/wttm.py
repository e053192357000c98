"""WTTM / TTM: Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024.

Temperature scaling of a distribution is a power transform, softmax(z / T) = p^gamma / sum_k p_k^gamma
with p = softmax(z) and gamma = 1 / T. Transformed teacher matching (TTM) applies it on the teacher's
side only and matches the student's plain (T = 1) distribution to it:

    p~_t     = p_t^gamma / U_gamma(p_t),        U_gamma(p) = sum_k p_k^gamma      (the power sum)
    L_TTM    = mean_i KL(p~_t,i || p_s,i)

which, the paper shows, is KD plus a Renyi-entropy regulariser of the student. Weighted TTM (WTTM)
weights each sample by its teacher's power sum, larger for a smoother teacher distribution:

    L_WTTM   = mean_i U_gamma(p_t,i) * KL(p~_t,i || p_s,i)

Neither carries KD's T^2 factor (the student is not scaled). As the authors' code (zkxufo/TTM at
fe457b33a71ba27536ec04fe3d32c5b04963522f, distiller_zoo/ttm.py and wttm.py), the total loss is
`-r` CE + `-b` (W)TTM; kdbench computes p~_t in log space (log p~_t = log_softmax(gamma * log p_t),
exact) where the authors raise the teacher's softmax to the power gamma.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.core.errors import ConfigError

from .base import Features, FeatureShapes, Method, MethodContext, register_method, require_same_classes


def transformed_teacher(teacher_logits: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(log p~_t, U_gamma(p_t)): the power-transformed teacher distribution (N, K) in log space and
    each row's power sum (N,), without gradient."""
    powered = gamma * F.log_softmax(teacher_logits.detach(), dim=1)  # log p_t^gamma
    return F.log_softmax(powered, dim=1), powered.logsumexp(dim=1).exp()


def transformed_matching(
    student_logits: Tensor, teacher_logits: Tensor, gamma: float, weighted: bool
) -> Tensor:
    """mean_i w_i * KL(p~_t,i || softmax(z_s,i)), w_i = U_gamma(p_t,i) (WTTM) or 1 (TTM)."""
    log_target, power_sum = transformed_teacher(teacher_logits, gamma)
    per_sample = F.kl_div(
        F.log_softmax(student_logits, dim=1), log_target, reduction="none", log_target=True
    ).sum(dim=1)
    return (power_sum * per_sample).mean() if weighted else per_sample.mean()


@register_method
class WTTM(Method):
    """Weighted transformed teacher matching: KL to the power-transformed teacher, weighted by its power sum.

    Defaults from the authors' README (zkxufo/TTM at fe457b3): its WTTM example (vgg13 -> vgg8, WTTM
    added to CRD) runs `--add wttm --ttm_l 0.2 -a 4`, so gamma 0.2 (a teacher temperature of 5) and
    WTTM weight 4, next to CE weight 1 (`-r`, default 1). The paper tunes gamma and the weight per
    pair (its Appendix A.4); pass them with --hp wttm.gamma=... --hp wttm.method_weight=....
    """

    name = "wttm"
    fuses = True
    weighted = True
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 4.0, "gamma": 0.2}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes(cls.name, student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        if hp["gamma"] <= 0:
            raise ConfigError(
                f"{self.name}.gamma={hp['gamma']}: takes a number above 0 (1 / the teacher's temperature)"
            )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        loss = transformed_matching(student.logits, teacher.logits, self.hp["gamma"], self.weighted)
        return {self.name: loss}


@register_method
class TTM(WTTM):
    """Transformed teacher matching: KL from the power-transformed teacher to the untempered student.

    Defaults from the authors' README (zkxufo/TTM at fe457b3), its TTM example (vgg13 -> vgg8):
    `--distill ttm --ttm_l 0.1 -r 1 -b 45 -a 0`: gamma 0.1 (a teacher temperature of 10), TTM weight 45,
    CE weight 1, no KD term. The paper tunes both per pair (its Appendix A.4).
    """

    name = "ttm"
    weighted = False
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 45.0, "gamma": 0.1}
