"""CC (Peng et al., ICCV 2019, methods/cc.py): the correlation congruence as RepDistiller computes it.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import Method, MethodContext

NUM_CLASSES = 5


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


def rows(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.tolist()


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def test_cc_matches_repdistiller_correlation_of_neighbouring_mismatches():
    from kdbench.methods.cc import correlation_congruence_loss

    e_s = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    e_t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(rows(e_s), rows(e_t), strict=True)]
    # d = [[1, 1], [1, 2], [2, 1]] -> (<d0, d1> + <d1, d2>) / 2 = (3 + 4) / 2
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert expected == 3.5
    assert correlation_congruence_loss(e_s, e_t).item() == pytest.approx(expected)


def test_cc_embeds_both_pooled_features_into_the_shared_space():
    cc = build_between("cc", embed_dim=6)
    assert cc.student_embed.in_features == STUDENT.pooled[0]
    assert cc.teacher_embed.in_features == TEACHER.pooled[0]
    student, teacher = random_features(STUDENT, 3, False), random_features(TEACHER, 3, False)
    e_s, e_t = rows(cc.student_embed(student.pooled)), rows(cc.teacher_embed(teacher.pooled))
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(e_s, e_t, strict=True)]
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert cc.method_terms(student, teacher, None, None)["cc"].item() == pytest.approx(expected, rel=1e-5)
