"""RKD: Park et al., "Relational Knowledge Distillation", CVPR 2019.

Distance-wise and angle-wise relations among the examples of a batch are transferred:

    psi_D(t_i, t_j)      = ||t_i - t_j||_2 / mu,   mu = mean over pairs i != j of ||t_i - t_j||_2
    psi_A(t_i, t_j, t_k) = <e_ij, e_kj>,           e_ij = (t_i - t_j) / ||t_i - t_j||_2
    L_RKD = w_D * mean_{i,j} huber(psi_D^t - psi_D^s) + w_A * mean_{i,j,k} huber(psi_A^t - psi_A^s)

huber is the smooth-L1 loss (delta 1). Means run over all b^2 (b^3) index tuples, the degenerate
ones (i = j, or j equal to i or k in the angle) contributing 0 on both sides, as in the authors'
code. w_D = 25 and w_A = 50 are the paper's weights (RepDistiller's RKDLoss defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import Method, register_method


def pairwise_distances(embedding: Tensor, eps: float = 1e-12) -> Tensor:
    """||e_i - e_j||_2 for all pairs (b x b), 0 on the diagonal; the clamp keeps sqrt differentiable."""
    squared_norms = embedding.pow(2).sum(dim=1)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2 * embedding @ embedding.t()).clamp(min=eps)
    off_diagonal = 1 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype)
    return squared.sqrt() * off_diagonal


def normalized_distances(embedding: Tensor) -> Tensor:
    """psi_D: pairwise distances divided by their mean over the pairs i != j."""
    distances = pairwise_distances(embedding)
    return distances / distances[distances > 0].mean()


def angles(embedding: Tensor) -> Tensor:
    """psi_A as a (b, b, b) tensor: [j, i, k] = cosine of the angle at e_j between e_i and e_k."""
    unit_differences = F.normalize(embedding[None, :, :] - embedding[:, None, :], p=2, dim=2)  # [j, i] = e_ij
    return unit_differences @ unit_differences.transpose(1, 2)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    student, teacher = student.flatten(1), teacher.flatten(1)
    return F.smooth_l1_loss(normalized_distances(student), normalized_distances(teacher))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    student, teacher = student.flatten(1), teacher.flatten(1)
    return F.smooth_l1_loss(angles(student), angles(teacher))


@register_method
class RKD(Method):
    """Relational KD (distance + angle) on the pooled features.

    Features: RepDistiller (Tian et al., ICLR 2020) applies RKDLoss directly (no embedding head)
    to `feat[-1]` of its list [stem, stages..., pooled], i.e. `Features.pooled` here. Defaults:
    RepDistiller's scripts/run_cifar_distill.sh, `--distill rkd -r 1 -a 0 -b 1`, with the inner
    weights w_D = 25, w_A = 50 of RKDLoss (the paper's).
    """

    name = "rkd"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "distance_weight": 25.0,
        "angle_weight": 50.0,
    }

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        return {
            "rkd_distance": self.hp["distance_weight"] * rkd_distance_loss(student.pooled, teacher.pooled),
            "rkd_angle": self.hp["angle_weight"] * rkd_angle_loss(student.pooled, teacher.pooled),
        }
