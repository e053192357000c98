"""SRD (Miles & Mikolajczyk, AAAI 2024, methods/srd.py): the linear projector, the batch-normalised
features and the log-sum-of-4th-powers loss, beside KL at T = 1.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError

NUM_CLASSES = 3
STUDENT = FeatureShapes(None, (), (), (2,), (NUM_CLASSES,))
TEACHER = FeatureShapes(None, (), (), (3,), (NUM_CLASSES,))


def build(**overrides):
    cls = METHODS.get("srd")
    context = MethodContext(STUDENT, TEACHER, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long))
    return cls(cls.resolve_hp(overrides), context)


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def batch_norm_by_hand(rows):
    """Each column z-scored with the batch's mean and biased variance, eps 1e-4."""
    columns = list(zip(*rows, strict=True))
    normed = []
    for column in columns:
        mean = sum(column) / len(column)
        variance = sum((v - mean) ** 2 for v in column) / len(column)
        normed.append([(v - mean) / math.sqrt(variance + 1e-4) for v in column])
    return [list(row) for row in zip(*normed, strict=True)]


POOLED_S = [[0.5, -1.0], [1.5, 0.2], [-0.3, 0.9], [0.0, 0.4]]
POOLED_T = [[1.0, 0.0, 2.0], [0.3, -0.7, 1.1], [2.2, 0.5, -0.4], [0.8, 1.3, 0.6]]
LOGITS_S = [[1.0, 0.0, -1.0], [0.2, 0.4, 0.1], [-0.5, 1.5, 0.0], [0.3, -0.2, 0.9]]
LOGITS_T = [[2.0, -1.0, 0.0], [0.0, 1.0, 0.5], [0.1, 0.2, 0.3], [1.0, 1.0, -1.0]]
LABELS = [0, 1, 2, 1]


def test_srd_is_twice_the_log_of_the_summed_fourth_powers_of_the_normalised_difference_plus_kl_at_t1():
    method = build()
    terms = method.losses(
        Features(logits=torch.tensor(LOGITS_S), pooled=torch.tensor(POOLED_S)),
        Features(logits=torch.tensor(LOGITS_T), pooled=torch.tensor(POOLED_T)),
        torch.tensor(LABELS),
        None,
    )
    weight, bias = method.projector.weight.tolist(), method.projector.bias.tolist()
    projected = [
        [sum(w * x for w, x in zip(weight[d], row, strict=True)) + bias[d] for d in range(3)]
        for row in POOLED_S
    ]
    student, teacher = batch_norm_by_hand(projected), batch_norm_by_hand(POOLED_T)
    fourth_powers = sum(
        abs(s - t) ** 4 for rs, rt in zip(student, teacher, strict=True) for s, t in zip(rs, rt, strict=True)
    )
    assert terms["srd"].item() == pytest.approx(2.0 * math.log(fourth_powers), rel=1e-5)
    kl = sum(
        sum(q * math.log(q / p) for p, q in zip(softmax(s), softmax(t), strict=True))
        for s, t in zip(LOGITS_S, LOGITS_T, strict=True)
    ) / len(LABELS)
    assert terms["kd"].item() == pytest.approx(kl, rel=1e-5)
    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(LOGITS_S, LABELS, strict=True)) / len(LABELS)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert set(terms) == {"ce", "kd", "srd"}


def test_srd_term_is_zero_on_a_batch_of_one_and_still_reaches_the_projector():
    method = build()
    student = Features(logits=torch.zeros(1, NUM_CLASSES), pooled=torch.ones(1, 2, requires_grad=True))
    teacher = Features(logits=torch.zeros(1, NUM_CLASSES), pooled=torch.ones(1, 3))
    term = method.method_terms(student, teacher, torch.tensor([0]), None)["srd"]
    assert term.item() == 0.0
    term.backward()
    assert torch.isfinite(method.projector.weight.grad).all()


def test_srd_refuses_a_pair_of_other_classes_or_without_a_teacher():
    other = FeatureShapes(None, (), (), (3,), (NUM_CLASSES + 1,))
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get("srd").check_pair(STUDENT, other)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("srd").check_pair(STUDENT, None)
