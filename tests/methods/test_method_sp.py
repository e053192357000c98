"""SP (Tung & Mori, ICCV 2019, methods/sp.py): the Gram matrices computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError

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


def test_sp_refuses_a_model_without_stages():
    no_stages = FeatureShapes(stem=None, stages=(), preact=(), pooled=(4,), logits=(NUM_CLASSES,))
    with pytest.raises(PairNotSupportedError, match="stage outputs"):
        METHODS.get("sp").check_pair(STUDENT, no_stages)


def test_sp_matches_hand_computed_gram_matrices():
    # two samples; the last stage is (2 channels, 1 x 1) for the student, (2, 1, 1) for the teacher
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    # G_s = [[1, 1], [1, 2]] -> rows / (sqrt 2, sqrt 5); G_t = identity (rows already unit)
    g_s = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    g_t = [[1.0, 0.0], [0.0, 1.0]]
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(2) for j in range(2)) / 2**2
    sp = build_between("sp")
    only_last_stage_counts = [torch.zeros(2, 1), student]
    terms = sp.method_terms(features(stages=only_last_stage_counts), features(stages=[teacher]), None, None)
    assert terms["sp"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((4 - math.sqrt(2) - 4 / math.sqrt(5)) / 4)  # the same sum, expanded
