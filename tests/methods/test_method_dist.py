"""DIST (Huang et al., NeurIPS 2022, methods/dist.py): the Pearson relations written out by hand.

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


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_dist_matches_pearson_relations():
    z_s, z_t = torch.randn(4, NUM_CLASSES) * 2, torch.randn(4, NUM_CLASSES) * 2
    tau = 4.0
    y_s = [softmax(row, tau) for row in rows(z_s)]
    y_t = [softmax(row, tau) for row in rows(z_t)]
    inter = 1 - statistics.fmean(statistics.correlation(s, t) for s, t in zip(y_s, y_t, strict=True))
    columns_s, columns_t = list(zip(*y_s, strict=True)), list(zip(*y_t, strict=True))
    intra = 1 - statistics.fmean(
        statistics.correlation(s, t) for s, t in zip(columns_s, columns_t, strict=True)
    )
    dist = build_between("dist")  # beta = gamma = 2
    terms = dist.method_terms(features(logits=z_s), features(logits=z_t), None, None)
    assert terms["dist_inter"].item() == pytest.approx(2 * tau**2 * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(2 * tau**2 * intra, rel=1e-4)
    # identical predictions correlate perfectly (up to the authors' eps in the denominator)
    same = dist.method_terms(features(logits=z_t), features(logits=z_t), None, None)
    assert same["dist_inter"].item() == pytest.approx(0.0, abs=1e-3)
    assert same["dist_intra"].item() == pytest.approx(0.0, abs=1e-3)
