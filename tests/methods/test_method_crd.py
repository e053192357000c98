"""CRD (Tian et al., ICLR 2020, methods/crd.py): negatives, the NCE loss and the memory update.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_fixtures import PAIR_LABELS as LABELS
from method_fixtures import PAIR_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import PAIR_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import build, feature_shapes, features_of, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features

CRD_LABELS = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)  # 12 samples, 3 classes: 8 negatives per anchor


def crd_method(**overrides):
    shapes = feature_shapes([(2, 4, 4)], pooled=(3,))
    hp = {"feat_dim": 3, "nce_k": 2, **overrides}
    return build("crd", method_context(shapes, shapes, train_labels=CRD_LABELS), **hp)


def test_crd_negatives_are_distinct_and_never_of_the_anchor_class():
    method = crd_method(nce_k=5)
    labels = torch.tensor(CRD_LABELS)
    indices = torch.tensor([0, 5, 10, 3])
    for _ in range(20):
        negatives = method.sample_negatives(indices)
        assert negatives.shape == (4, 5)
        assert (labels[negatives] != labels[indices][:, None]).all()
        assert all(len(set(row)) == 5 for row in negatives.tolist())


def test_crd_caps_nce_k_at_the_smallest_negative_pool():
    with pytest.warns(UserWarning, match="capped at 8"):
        method = crd_method(nce_k=100)
    negatives = method.sample_negatives(torch.tensor([1, 6]))
    assert sorted(negatives[0].tolist()) == list(range(4, 12))
    assert sorted(negatives[1].tolist()) == [0, 1, 2, 3, 8, 9, 10, 11]


def test_crd_nce_loss_and_memory_update_follow_the_paper():
    temperature, momentum, num_train, k = 0.5, 0.5, 12, 2
    method = crd_method(nce_t=temperature, nce_momentum=momentum)
    with torch.no_grad():
        for embed in (method.student_embed, method.teacher_embed):
            embed.weight.copy_(torch.eye(3))
            embed.bias.zero_()
        method.student_memory.copy_(F.normalize(torch.arange(36.0).view(12, 3).sin(), dim=1))
        method.teacher_memory.copy_(F.normalize(torch.arange(36.0).view(12, 3).cos(), dim=1))
    student_memory_before = method.student_memory.clone()
    teacher_memory_before = method.teacher_memory.clone()
    indices = torch.tensor([0, 5])
    negatives = torch.tensor([[4, 9], [0, 10]])
    method.sample_negatives = lambda anchor_indices: negatives

    student_pooled = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    teacher_pooled = torch.tensor([[2.0, 1.0, 2.0], [4.0, 0.0, 3.0]])
    terms = method.method_terms(
        Features(logits=STUDENT_LOGITS, pooled=student_pooled),
        Features(logits=TEACHER_LOGITS, pooled=teacher_pooled),
        LABELS,
        indices,
    )

    # Identity embeddings: v = pooled / ||pooled||.
    student_embedding = [[x / 3 for x in (1, 2, 2)], [x / 5 for x in (0, 3, 4)]]
    teacher_embedding = [[x / 3 for x in (2, 1, 2)], [x / 5 for x in (4, 0, 3)]]

    def nce_by_hand(anchors, memory):
        slots = [[0, 4, 9], [5, 0, 10]]  # the positive (own index) first, then the negatives
        exp_scores = [
            [
                math.exp(sum(a * m for a, m in zip(anchor, memory[j].tolist(), strict=True)) / temperature)
                for j in row
            ]
            for anchor, row in zip(anchors, slots, strict=True)
        ]
        normalizer = num_train * sum(sum(row) for row in exp_scores) / 6  # Z = N * mean, first batch
        noise = 1 / num_train
        loss = 0.0
        for row in exp_scores:
            probabilities = [score / normalizer for score in row]
            loss -= math.log(probabilities[0] / (probabilities[0] + k * noise))
            loss -= sum(math.log(k * noise / (p + k * noise)) for p in probabilities[1:])
        return loss / 2, normalizer

    student_anchor_loss, student_anchor_z = nce_by_hand(student_embedding, teacher_memory_before)
    teacher_anchor_loss, teacher_anchor_z = nce_by_hand(teacher_embedding, student_memory_before)
    assert terms["crd"].item() == pytest.approx(student_anchor_loss + teacher_anchor_loss, rel=1e-5)
    assert method.student_anchor_normalizer.item() == pytest.approx(student_anchor_z, rel=1e-5)
    assert method.teacher_anchor_normalizer.item() == pytest.approx(teacher_anchor_z, rel=1e-5)

    # Memory: the batch's own slots move by momentum, then are renormalised; the others stay.
    for memory, before, embedding in (
        (method.student_memory, student_memory_before, student_embedding),
        (method.teacher_memory, teacher_memory_before, teacher_embedding),
    ):
        for row, index in enumerate(indices.tolist()):
            blended = [
                momentum * old + (1 - momentum) * new
                for old, new in zip(before[index].tolist(), embedding[row], strict=True)
            ]
            norm = math.sqrt(sum(x * x for x in blended))
            assert memory[index].tolist() == pytest.approx([x / norm for x in blended], rel=1e-5)
        untouched = [i for i in range(num_train) if i not in indices.tolist()]
        assert torch.equal(memory[untouched], before[untouched])

    # Z stays fixed after the first batch.
    method.method_terms(
        Features(logits=STUDENT_LOGITS, pooled=2 * student_pooled),
        Features(logits=TEACHER_LOGITS, pooled=teacher_pooled),
        LABELS,
        indices,
    )
    assert method.student_anchor_normalizer.item() == pytest.approx(student_anchor_z, rel=1e-5)


def test_crd_is_deterministic_under_manual_seed_and_trains_only_the_embeddings():
    shapes = feature_shapes([(2, 4, 4)])

    def one_step(method):
        student, teacher = features_of(shapes, batch=3), features_of(shapes, batch=3)
        loss = method.losses(student, teacher, torch.tensor([0, 1, 2]), torch.tensor([2, 7, 9]))["crd"]
        return student, loss

    def seeded_first_step():
        torch.manual_seed(3)
        method = crd_method(nce_k=4)
        return method, *one_step(method)

    method, student, loss = seeded_first_step()
    again, _, loss_again = seeded_first_step()
    assert loss.item() == loss_again.item()
    assert torch.equal(method.student_memory, again.student_memory)

    loss.backward()
    assert method.student_embed.weight.grad is not None and student.pooled.grad is not None
    one_step(method)[1].backward()  # the bank updated by step 1 does not break step 2's backward
    assert [name for name, _ in method.named_parameters()] == [
        "student_embed.weight",
        "student_embed.bias",
        "teacher_embed.weight",
        "teacher_embed.bias",
    ]
    assert "train_labels" not in method.state_dict() and "student_memory" in method.state_dict()
