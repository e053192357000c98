"""the baseline (methods/student.py): plain cross-entropy, no teacher.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import PAIR_LABELS as LABELS
from method_fixtures import PAIR_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import build, cross_entropy_by_hand, feature_shapes, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features


def test_student_is_plain_cross_entropy_without_teacher():
    shapes = feature_shapes([(2, 4, 4)])
    method = build("student", method_context(shapes, None))
    assert method.needs_teacher is False
    student = Features(logits=STUDENT_LOGITS, pooled=torch.zeros(2, 3))
    terms = method.losses(student, None, LABELS, torch.tensor([0, 1]))
    assert terms.keys() == {"ce"}
    assert terms["ce"].item() == pytest.approx(cross_entropy_by_hand(STUDENT_LOGITS, LABELS.tolist()))
