"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

The paper matches the b x b correlation matrices of teacher and student embeddings,
L_CC = 1/b^2 * ||psi(F_t) - psi(F_s)||^2 with psi a (Taylor-expanded Gaussian RBF) kernel.
kdbench follows RepDistiller (Tian et al., ICLR 2020, distiller_zoo/CC.py), whose published
CIFAR-100 numbers and beta = 0.02 come from the implementation the CC authors gave them:
with the per-sample embedding differences d_i = |e_s,i - e_t,i| (element-wise absolute value),

    L_CC = 1/(b-1) * sum_{i=1}^{b-1} <d_i, d_{i+1}>

i.e. the correlation of the student-teacher mismatch between neighbouring samples of the batch.
The embeddings are learned linear maps of the pooled features into a shared space.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.methods.base import Method, MethodContext, register_method


def correlation_congruence_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    mismatch = (student_embedding - teacher_embedding).abs()
    return (mismatch[:-1] * mismatch[1:]).sum(dim=1).mean()


@register_method
class CC(Method):
    """Correlation congruence between linear embeddings of the pooled features.

    Features: RepDistiller embeds `feat[-1]` of its list [stem, stages..., pooled], i.e.
    `Features.pooled`, with a `LinearEmbed` (one nn.Linear, no normalisation) per network into
    `--feat_dim 128`; both embeddings are trained with the student. Defaults: RepDistiller's
    scripts/run_cifar_distill.sh, `--distill correlation -r 1 -a 0 -b 0.02`.
    """

    name = "cc"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.02, "embed_dim": 128}

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.student_embed = nn.Linear(context.student_shapes.pooled[0], hp["embed_dim"])
        self.teacher_embed = nn.Linear(context.teacher_shapes.pooled[0], hp["embed_dim"])

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        student_embedding = self.student_embed(student.pooled)
        teacher_embedding = self.teacher_embed(teacher.pooled)
        return {"cc": correlation_congruence_loss(student_embedding, teacher_embedding)}
