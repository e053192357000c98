"""PKT (Passalis & Tefas, ECCV 2018, methods/pkt.py): cosine-similarity probabilities computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math
import statistics

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


def features(logits=None, pooled=None, stages=()) -> Features:
    return Features(logits=logits, pooled=pooled, stages=list(stages))


def rows(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.tolist()


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def test_pkt_matches_cosine_similarity_probabilities():
    student, teacher = torch.randn(3, 4), torch.randn(3, 6)
    eps = 1e-7

    def conditional(points):
        cos = [[dot(a, b) / (math.hypot(*a) * math.hypot(*b)) for b in points] for a in points]
        kernel = [[(c + 1) / 2 for c in row] for row in cos]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = conditional(rows(student)), conditional(rows(teacher))
    expected = statistics.fmean(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(3) for j in range(3)
    )
    pkt = build_between("pkt")
    terms = pkt.method_terms(features(pooled=student), features(pooled=teacher), None, None)
    assert terms["pkt"].item() == pytest.approx(expected, rel=1e-4, abs=1e-8)
    same = pkt.method_terms(features(pooled=2 * teacher), features(pooled=teacher), None, None)
    assert same["pkt"].item() == pytest.approx(0.0, abs=1e-7)  # cosine kernel: scale does not matter
