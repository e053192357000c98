"""Every method's `losses` gives finite gradients that reach the student's features."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import (
    STUDENT,
    TEACHER,
    build,
    build_between,
    feature_shapes,
    features_of,
    method_context,
    random_features,
)

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.registries import METHODS, lookup

FOUNDATION = ("student", "kd", "fitnet", "at", "crd")


METHOD_NAMES = ("sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "dist")


@pytest.mark.parametrize("name", FOUNDATION)
def test_losses_are_finite_and_backpropagate(name):
    student_shapes = feature_shapes([(2, 8, 8), (3, 4, 4), (4, 2, 2)])
    teacher_shapes = feature_shapes([(3, 8, 8), (5, 4, 4), (6, 2, 2)], pooled=(6,))
    context = method_context(student_shapes, teacher_shapes)
    method_class = lookup(METHODS, "method", name)
    method_class.check_pair(student_shapes, teacher_shapes)
    method = build(name, context, **({"nce_k": 2, "feat_dim": 4} if name == "crd" else {}))
    student, teacher = features_of(student_shapes, batch=3), features_of(teacher_shapes, batch=3)
    terms = method.losses(
        student, teacher if method.needs_teacher else None, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 4])
    )
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert student.logits.grad is not None


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_backward_gives_finite_gradients(name):
    method = build_between(name)
    student = random_features(STUDENT, batch=4, requires_grad=True)
    teacher = random_features(TEACHER, batch=4, requires_grad=False)
    labels = torch.tensor([0, 1, 2, 3])
    terms = method.losses(student, teacher, labels, torch.arange(4))
    assert "ce" in terms and len(terms) >= 2
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    student_grads = [t.grad for t in [student.logits, student.pooled, *student.stages] if t.grad is not None]
    assert student_grads and all(torch.isfinite(g).all() for g in student_grads)
    assert any(g.abs().sum() > 0 for g in student_grads)
    for parameter in method.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
