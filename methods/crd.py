"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

Student and teacher pooled features are embedded (linear + l2 norm) into a feat_dim space. Each
embedding is contrasted against a memory bank of the *other* network's embeddings: the anchor's own
slot (positive, index i) and K negatives. With P(j | v) = exp(<v, m_j> / tau) / Z and the uniform
noise distribution Pn = 1 / N (N = training-set size), h = P / (P + K Pn) and the NCE loss (Eq. 18) is

    L = -E[ log h(pos) ] - K E[ log(1 - h(neg)) ],     1 - h = K Pn / (P + K Pn)

summed over the two directions (student anchor vs teacher memory, teacher anchor vs student memory).
Z is a constant fixed on the first batch, Z = N * mean(exp(<v, m_j> / tau)), and after each step the
batch's slots move to normalise(m * slot + (1 - m) * embedding); both as in the authors' RepDistiller
(crd/memory.py ContrastMemory, crd/criterion.py ContrastLoss and Embed).

Negatives follow RepDistiller's CIFAR default, 'exact' mode (dataset/cifar100.py): the positive is the
sample itself and the K negatives are drawn uniformly without replacement among the samples of other
classes. kdbench draws them here, on the device, from `context.train_labels` and the batch indices.
K is capped at the smallest negative pool, num_train minus the largest class (a warning says so).
Scores come from one (batch x N) product with the whole bank, then the sampled columns: RepDistiller's
values, without its (batch x (K + 1) x feat_dim) gather of bank rows.

Defaults: RepDistiller train_student.py (`--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5`)
and scripts/run_cifar_distill.sh (`--distill crd -a 0 -b 0.8`, -r 1).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Features, Method, MethodContext, PairNotSupportedError, register_method


def nce_loss(scores: Tensor, noise_probability: float) -> Tensor:
    """Eq. (18) on scores P of shape (batch, 1 + K), the positive first; averaged over the batch."""
    num_negatives = scores.shape[1] - 1
    k_noise = num_negatives * noise_probability
    log_h_positive = torch.log(scores[:, 0] / (scores[:, 0] + k_noise))
    log_one_minus_h_negatives = torch.log(k_noise / (scores[:, 1:] + k_noise))
    return -(log_h_positive.sum() + log_one_minus_h_negatives.sum()) / scores.shape[0]


@register_method
class CRD(Method):
    """Contrastive representation distillation with memory banks and 'exact' negative sampling."""

    name = "crd"
    distributed_ok = False  # its memory bank is indexed by sample; ranks would see shards only
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 0.8,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_momentum": 0.5,
    }

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        feat_dim, num_train = hp["feat_dim"], context.num_train
        self.student_embed = nn.Linear(math.prod(context.student_shapes.pooled), feat_dim)
        self.teacher_embed = nn.Linear(math.prod(context.teacher_shapes.pooled), feat_dim)

        self.num_negatives = min(hp["nce_k"], num_train - int(torch.bincount(context.train_labels).max()))
        if self.num_negatives < 1:
            raise PairNotSupportedError(
                "crd: the training set has a single class, so 'exact' mode has no negatives"
            )
        if self.num_negatives < hp["nce_k"]:
            warnings.warn(
                f"crd: nce_k {hp['nce_k']} capped at {self.num_negatives}, the fewest other-class samples "
                "any anchor has in this training set",
                stacklevel=2,
            )

        # Memory banks (ContrastMemory): uniform in [-stdv, stdv], one slot per training sample.
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("student_memory", torch.rand(num_train, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("teacher_memory", torch.rand(num_train, feat_dim) * 2 * stdv - stdv)
        # Z of each direction, set on the first batch (negative = not set yet).
        self.register_buffer("student_anchor_normalizer", torch.tensor(-1.0))
        self.register_buffer("teacher_anchor_normalizer", torch.tensor(-1.0))
        self.register_buffer("train_labels", context.train_labels.clone(), persistent=False)

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """(batch, K) training indices, each row distinct and of classes other than its anchor's.

        Uniform random keys with the anchor's class masked out; the K smallest keys are a uniform draw
        without replacement (RepDistiller: np.random.choice(cls_negative[target], K, replace=False)).
        Costs batch x num_train keys.
        """
        anchor_labels = self.train_labels[indices]
        keys = torch.rand(len(indices), len(self.train_labels), device=indices.device)
        keys.masked_fill_(self.train_labels == anchor_labels[:, None], 2.0)  # rand is in [0, 1)
        return keys.topk(self.num_negatives, dim=1, largest=False, sorted=False).indices

    def scores(self, anchors: Tensor, memory: Tensor, sample_indices: Tensor, normalizer: Tensor) -> Tensor:
        """P(j | v) = exp(<v, m_j> / tau) / Z for the sampled slots j; Z fixed on the first batch."""
        # Float32 even under autocast: exp(1 / 0.07) overflows half precision, and bf16 dot products are
        # too coarse once divided by 0.07.
        with torch.autocast(anchors.device.type, enabled=False):
            similarities = (anchors.float() @ memory.T).gather(1, sample_indices)
            exp_similarities = torch.exp(similarities / self.hp["nce_t"])
        with torch.no_grad():
            first_estimate = exp_similarities.mean() * len(memory)
            normalizer.copy_(torch.where(normalizer > 0, normalizer, first_estimate))
        return exp_similarities / normalizer

    @torch.no_grad()
    def updated_memory(self, memory: Tensor, embeddings: Tensor, indices: Tensor) -> Tensor:
        """slot_i <- normalise(m * slot_i + (1 - m) * embedding_i) for the batch's own indices.

        Returns a new bank rather than writing in place: this step's scores need the old one in backward.
        """
        momentum = self.hp["nce_momentum"]
        blended = memory[indices] * momentum + embeddings.to(memory.dtype) * (1 - momentum)
        return memory.index_copy(0, indices, F.normalize(blended, dim=1))

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        student_embedding = F.normalize(self.student_embed(student.pooled.flatten(1)), dim=1)
        teacher_embedding = F.normalize(self.teacher_embed(teacher.pooled.flatten(1)), dim=1)
        # Each row: the anchor's own slot (the positive), then its K negatives.
        sample_indices = torch.cat([indices[:, None], self.sample_negatives(indices)], dim=1)

        noise_probability = 1.0 / len(self.train_labels)
        student_anchor_scores = self.scores(
            student_embedding, self.teacher_memory, sample_indices, self.student_anchor_normalizer
        )
        teacher_anchor_scores = self.scores(
            teacher_embedding, self.student_memory, sample_indices, self.teacher_anchor_normalizer
        )
        loss = nce_loss(student_anchor_scores, noise_probability) + nce_loss(
            teacher_anchor_scores, noise_probability
        )

        self.student_memory = self.updated_memory(self.student_memory, student_embedding, indices)
        self.teacher_memory = self.updated_memory(self.teacher_memory, teacher_embedding, indices)
        return {"crd": loss}
