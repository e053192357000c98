"""Every method's `losses` gives finite gradients that reach the student's features."""

from __future__ import annotations

import pytest
import torch

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext

FOUNDATION = ("student", "kd", "fitnet", "at", "crd")


def feature_shapes(stages, stem=(2, 4, 4), pooled=(3,), logits=(3,)) -> FeatureShapes:
    return FeatureShapes(stem=stem, stages=tuple(stages), preact=tuple(stages), pooled=pooled, logits=logits)


def method_context(student_shapes, teacher_shapes, train_labels=(0, 0, 1, 1, 2, 2)) -> MethodContext:
    labels = torch.tensor(train_labels)
    return MethodContext(student_shapes, teacher_shapes, int(labels.max()) + 1, len(labels), labels)


def build(name: str, context: MethodContext, **overrides) -> Method:
    method_class = lookup(METHODS, "method", name)
    return method_class(method_class.resolve_hp(overrides), context)


def features_of(shapes: FeatureShapes, batch: int = 2) -> Features:
    def rand(shape):
        return torch.rand(batch, *shape, requires_grad=True)

    return Features(
        logits=rand(shapes.logits),
        pooled=rand(shapes.pooled),
        stem=rand(shapes.stem),
        stages=[rand(s) for s in shapes.stages],
        preact=[rand(s) for s in shapes.preact],
    )


NUM_CLASSES = 5
METHOD_NAMES = ("sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "dist")


def shapes(channels: list[int], sizes: list[int], pooled: int | None = None, classes: int = NUM_CLASSES):
    stages = tuple((c, s, s) for c, s in zip(channels, sizes, strict=True))
    return FeatureShapes(
        stem=(channels[0], sizes[0], sizes[0]),
        stages=stages,
        preact=stages,
        pooled=(pooled or channels[-1],),
        logits=(classes,),
    )


STUDENT = shapes([2, 3], [4, 2])
TEACHER = shapes([3, 4], [4, 4])  # same stage count, wider, larger last map


def context(student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER) -> MethodContext:
    return MethodContext(
        student, teacher, NUM_CLASSES, num_train=8, train_labels=torch.zeros(8, dtype=torch.long)
    )


def build_between(
    name: str, student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, **overrides
) -> Method:
    cls = METHODS.get(name)
    return cls(cls.resolve_hp(overrides), context(student, teacher))


def random_features(feature_shapes: FeatureShapes, batch: int, requires_grad: bool) -> Features:
    def tensor(shape):
        return torch.randn(batch, *shape, requires_grad=requires_grad)

    return Features(
        logits=tensor(feature_shapes.logits),
        pooled=tensor(feature_shapes.pooled),
        stem=tensor(feature_shapes.stem),
        stages=[tensor(s) for s in feature_shapes.stages],
        preact=[tensor(s) for s in feature_shapes.preact],
    )


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
