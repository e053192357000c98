"""ITRD: Miles, Lopez-Rodriguez & Mikolajczyk, "Information Theoretic Representation Distillation",
BMVC 2022 (arXiv 2112.00459).

Two terms on the pooled representations, both from Renyi's matrix-based entropy (paper, Sec. 3):

correlation: the student's embedding f_s = W z_s + b and the teacher's z_t are standardised per
dimension over the batch, their per-dimension cross-correlation c_d should be 1, and Renyi's
alpha-order entropy of the residuals is minimised:

    f^       = (f - mean_batch(f)) / std_batch(f)                 (unbiased std)
    c_d      = 1/B sum_i f^_s[i, d] f^_t[i, d]
    L_corr   = log2 sum_d (|c_d - 1|^2)^alpha

mutual information: with row-normalised features and the linear-kernel Gram matrices
G_s = F_s F_s^T, G_t = F_t F_t^T and their Hadamard product G_st = G_s o G_t, each divided by its
trace, maximising the mutual information I(s; t) = H_2(G_s) + H_2(G_t) - H_2(G_st) reduces (H_2 the
order-2 entropy, -log2 ||G||_F^2, the teacher's term constant) to

    L_mutual = sum_ij ( (G_s / tr G_s)_ij^2 - (G_st / tr G_st)_ij^2 )

    total    = ce_weight * CE + method_weight * (lambda_corr * L_corr + lambda_mutual * L_mutual)

As the authors' code (roymiles/ITRD, commit 5d08c6b, distiller_zoo/IT.py `ITLoss`, helper/loops.py,
train_student.py): z is RepDistiller's last feature, the pooled vector (kdbench's `Features.pooled`);
W is one nn.Linear(s_dim, t_dim) shared by both terms; the correlation term always embeds the
student, the mutual-information term only when the widths differ (the code's `if self.s_dim !=
self.t_dim`); no KL term. Defaults are the README's command (`-r 1.0 -b 1.0 --lambda_corr 2.0
--lambda_mutual 1.0 --alpha_it 1.01`, wrn_40_2 -> wrn_16_2); train_student.py's argparse defaults
differ (lambda_mutual 0.05, alpha_it 1.5).

A batch of one sample has no batch standard deviation; on such a batch both terms are 0. A
dimension constant over the batch (a teacher channel that no sample activates) has standard
deviation 0: the code's division makes the loss NaN; kdbench floors the deviation at 1e-12, so the
dimension standardises to 0 and adds the constant (|0 - 1|^2)^alpha = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Features, FeatureShapes, Method, MethodContext, PairNotSupportedError, register_method

STD_FLOOR = 1e-12  # a dimension constant over the batch (module docstring)


def standardize_columns(features: Tensor) -> Tensor:
    """Each dimension minus its batch mean, over its unbiased batch std (floored: module docstring)."""
    return (features - features.mean(dim=0)) / features.std(dim=0).clamp_min(STD_FLOOR)


def correlation_loss(student: Tensor, teacher: Tensor, alpha: float) -> Tensor:
    """log2 sum_d (|c_d - 1|^2)^alpha, c_d the batch correlation of dimension d."""
    student_std, teacher_std = standardize_columns(student), standardize_columns(teacher)
    correlation = (student_std * teacher_std).sum(dim=0) / len(student)
    return torch.log2((correlation - 1).abs().pow(2).pow(alpha).sum())


def mutual_information_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """sum (G_s / tr G_s)^2 - (G_st / tr G_st)^2 over the batch's row-normalised linear Gram matrices."""
    student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    gram_student = student @ student.t()
    gram_joint = gram_student * (teacher @ teacher.t())
    return ((gram_student / gram_student.trace()).pow(2) - (gram_joint / gram_joint.trace()).pow(2)).sum()


@register_method
class ITRD(Method):
    """Correlation and mutual-information terms on the pooled features, through one linear embedding."""

    name = "itrd"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "lambda_corr": 2.0,
        "lambda_mutual": 1.0,
        "alpha": 1.01,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        if teacher_shapes is None:
            raise PairNotSupportedError("itrd distils the teacher's pooled features: it needs a teacher")

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.student_width = math.prod(context.student_shapes.pooled)
        self.teacher_width = math.prod(context.teacher_shapes.pooled)
        self.embed = nn.Linear(self.student_width, self.teacher_width)

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        pooled_s, pooled_t = student.pooled.flatten(1), teacher.pooled.flatten(1)
        embedded = self.embed(pooled_s)
        if len(embedded) < 2:  # no batch statistics (module docstring)
            zero = embedded.sum() * 0.0
            return {"itrd_correlation": zero, "itrd_mutual": zero}
        mutual_s = embedded if self.student_width != self.teacher_width else pooled_s
        with torch.autocast(embedded.device.type, enabled=False):  # standardisation and logs in float32
            correlation = correlation_loss(embedded.float(), pooled_t.float(), self.hp["alpha"])
            mutual = mutual_information_loss(mutual_s.float(), pooled_t.float())
        return {
            "itrd_correlation": self.hp["lambda_corr"] * correlation,
            "itrd_mutual": self.hp["lambda_mutual"] * mutual,
        }
