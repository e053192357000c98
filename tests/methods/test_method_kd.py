"""KD (Hinton et al. 2015, methods/kd.py): the T^2-scaled KL term written out by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import PAIR_LABELS as LABELS
from method_fixtures import PAIR_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import PAIR_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import build, cross_entropy_by_hand, feature_shapes, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features


def test_kd_term_is_t_squared_kl_of_softened_outputs():
    shapes = feature_shapes([(2, 4, 4)])
    method = build("kd", method_context(shapes, shapes))
    terms = method.losses(
        Features(logits=STUDENT_LOGITS, pooled=torch.zeros(2, 3)),
        Features(logits=TEACHER_LOGITS, pooled=torch.zeros(2, 3)),
        LABELS,
        torch.tensor([0, 1]),
    )
    temperature = 4.0

    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    kl_sum = 0.0
    for student_row, teacher_row in zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), strict=True):
        p_student, p_teacher = softmax(student_row), softmax(teacher_row)
        kl_sum += sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student, strict=True))
    expected_kd = temperature**2 * kl_sum / 2

    assert terms.keys() == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(0.9 * expected_kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * cross_entropy_by_hand(STUDENT_LOGITS, LABELS.tolist()))
