"""NST (Huang & Wang 2017, methods/nst.py): the squared MMD of normalised channel maps.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

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


def test_nst_is_the_squared_mmd_of_normalised_channel_maps():
    student = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)]
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]  # last stage pooled 4x4 -> 2x2

    def mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> float:
        total = 0.0
        for sample_s, sample_t in zip(f_s, f_t, strict=True):  # per sample, averaged below
            s = [[x / math.hypot(*c) for x in c] for c in rows(sample_s.flatten(1))]
            t = [[x / math.hypot(*c) for x in c] for c in rows(sample_t.flatten(1))]

            def k(a, b):
                return dot(a, b) ** 2  # polynomial kernel, d = 2, c = 0

            total += (
                sum(k(a, b) for a in t for b in t) / len(t) ** 2
                + sum(k(a, b) for a in s for b in s) / len(s) ** 2
                - 2 * sum(k(a, b) for a in s for b in t) / (len(s) * len(t))
            )
        return total / len(f_s)

    pooled_teacher = teacher[1].view(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = mmd(student[0], teacher[0]) + mmd(student[1], pooled_teacher)
    nst = build_between("nst")
    terms = nst.method_terms(features(stages=student), features(stages=teacher), None, None)
    assert terms["nst"].item() == pytest.approx(expected, rel=1e-5)
