"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.

The features of a batch define conditional probabilities through a cosine-similarity kernel,

    K(a, b)    = (cos(a, b) + 1) / 2                    (cosine similarity scaled to [0, 1])
    p_{j|i}    = K(x_i, x_j) / sum_k K(x_i, x_k)

and the student's distribution is matched to the teacher's with a KL divergence:

    L_PKT = mean_{i,j} p^t_{j|i} * log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))

Following the authors' code (as used by RepDistiller, distiller_zoo/PKT.py), the sum over j
includes j = i and the KL terms are averaged over all b^2 pairs (the scale beta = 30000 belongs
to), with eps = 1e-7.
"""

from __future__ import annotations

from torch import Tensor

from kdbench.methods.base import Method, register_method

EPS = 1e-7


def cosine_conditional_probabilities(features: Tensor) -> Tensor:
    """p_{j|i} from the [0, 1]-scaled cosine similarities of the rows of `features` (b x b)."""
    unit = features / (features.norm(dim=1, keepdim=True) + EPS)
    kernel = (unit @ unit.t() + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor) -> Tensor:
    p_student = cosine_conditional_probabilities(student.flatten(1))
    p_teacher = cosine_conditional_probabilities(teacher.flatten(1))
    return (p_teacher * ((p_teacher + EPS) / (p_student + EPS)).log()).mean()


@register_method
class PKT(Method):
    """Probabilistic knowledge transfer on the pooled features.

    Features: RepDistiller (Tian et al., ICLR 2020) applies PKT directly (no embedding head) to
    `feat[-1]` of its list [stem, stages..., pooled], i.e. `Features.pooled` here. Defaults:
    RepDistiller's scripts/run_cifar_distill.sh, `--distill pkt -r 1 -a 0 -b 30000`.
    """

    name = "pkt"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 30000.0}

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        return {"pkt": pkt_loss(student.pooled, teacher.pooled)}
