"""WSLD (Zhou et al., ICLR 2021, methods/wsld.py): the weighted soft-label loss recomputed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import build, context_of, logits_features, shapes_of

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import PairNotSupportedError

STUDENT_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [1.0, 1.0, 1.0]])
TEACHER_LOGITS = torch.tensor([[3.0, -0.5, 0.2], [1.2, 0.4, -0.3], [0.0, 2.5, 0.5]])


def softmax_by_hand(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def wsld_by_hand(student, teacher, labels, temperature):
    total = 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        ce_student = -math.log(softmax_by_hand(s_row)[label])
        ce_teacher = -math.log(softmax_by_hand(t_row)[label])
        weight = 1 - math.exp(-(ce_student / ce_teacher))
        p_t, p_s = softmax_by_hand(t_row, temperature), softmax_by_hand(s_row, temperature)
        soft_ce = -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s, strict=True))
        total += weight * soft_ce
    return temperature**2 * total / len(labels)


def test_wsld_defaults_are_the_authors_cifar_ones():
    hp = lookup(METHODS, "method", "wsld").resolve_hp()
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 2.25,
        "temperature": 4.0,
    }


def test_wsld_weights_each_sample_soft_cross_entropy_by_the_ce_ratio():
    shapes = shapes_of([(2, 2, 2)])
    method = build("wsld", context_of(shapes, shapes))
    student_logits = STUDENT_LOGITS.clone().requires_grad_(True)
    terms = method.losses(logits_features(student_logits), logits_features(TEACHER_LOGITS), LABELS, LABELS)
    assert terms.keys() == {"ce", "wsld"}
    expected = wsld_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, 4.0)
    assert terms["wsld"].item() == pytest.approx(2.25 * expected, rel=1e-5)
    # the weights carry no gradient: d/dz of the term is w_i * T * (p_s - p_t) / batch
    terms["wsld"].backward()
    for i, (s_row, t_row, label) in enumerate(
        zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), LABELS.tolist(), strict=True)
    ):
        ratio = -math.log(softmax_by_hand(s_row)[label]) / -math.log(softmax_by_hand(t_row)[label])
        weight = 1 - math.exp(-ratio)
        p_s, p_t = softmax_by_hand(s_row, 4.0), softmax_by_hand(t_row, 4.0)
        expected_grad = [2.25 * weight * 4.0 * (ps - pt) / 3 for ps, pt in zip(p_s, p_t, strict=True)]
        assert student_logits.grad[i].tolist() == pytest.approx(expected_grad, rel=1e-4, abs=1e-7)


def test_wsld_refuses_different_class_counts():
    with pytest.raises(PairNotSupportedError, match="wsld"):
        lookup(METHODS, "method", "wsld").check_pair(
            shapes_of([(2, 2, 2)]), shapes_of([(2, 2, 2)], logits=(4,))
        )
