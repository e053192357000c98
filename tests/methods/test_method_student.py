"""the baseline (methods/student.py): plain cross-entropy, no teacher.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import build, feature_shapes, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features

STUDENT_LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
LABELS = torch.tensor([2, 0])


def cross_entropy_by_hand(logits, labels):
    return sum(
        -(row[label] - math.log(sum(math.exp(v) for v in row)))
        for row, label in zip(logits.tolist(), labels, strict=True)
    ) / len(labels)


def test_student_is_plain_cross_entropy_without_teacher():
    shapes = feature_shapes([(2, 4, 4)])
    method = build("student", method_context(shapes, None))
    assert method.needs_teacher is False
    student = Features(logits=STUDENT_LOGITS, pooled=torch.zeros(2, 3))
    terms = method.losses(student, None, LABELS, torch.tensor([0, 1]))
    assert terms.keys() == {"ce"}
    assert terms["ce"].item() == pytest.approx(cross_entropy_by_hand(STUDENT_LOGITS, LABELS.tolist()))
