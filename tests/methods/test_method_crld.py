"""CRLD (Zhang et al., ACM MM 2024, methods/crld.py): within-view and cross-view KL over the weak and
strong views, masked by the teacher's confidence, and CE on both views.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import softmax

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError

NUM_CLASSES = 3
SHAPES = FeatureShapes(None, (), (), (2,), (NUM_CLASSES,))


def build(**overrides):
    cls = METHODS.get("crld")
    return cls(
        cls.resolve_hp(overrides),
        MethodContext(SHAPES, SHAPES, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long)),
    )


def kd_by_hand(student_row, teacher_row, temperature):
    p_s, p_t = softmax(student_row, temperature), softmax(teacher_row, temperature)
    return temperature**2 * sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))


WEAK_S = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.2, 0.1, 0.4], [2.0, 0.0, -1.0]]
WEAK_T = [[6.0, -1.0, 0.5], [0.1, 1.5, -0.5], [0.0, -0.3, 5.2], [1.0, 1.0, -2.0]]  # samples 0, 2 confident
STRONG_S = [[0.5, 0.1, -0.2], [0.0, 0.4, 0.3], [-1.0, 0.2, 0.9], [1.2, -0.4, 0.1]]
STRONG_T = [[1.5, -0.2, 0.0], [-0.3, 1.1, 0.2], [0.2, -0.5, 1.4], [0.8, 0.6, -1.1]]
LABELS = [0, 1, 2, 0]


def logits(rows):
    return Features(logits=torch.tensor(rows), pooled=None)


def test_crld_is_masked_within_view_and_cross_view_kl_plus_ce_on_both_views():
    method = build(tau_strong=0.65)  # a strong-view threshold that leaves a sample out
    views = {"strong": (logits(STRONG_S), logits(STRONG_T))}
    terms = method.losses(logits(WEAK_S), logits(WEAK_T), torch.tensor(LABELS), None, views=views)

    weak_mask = [max(softmax(row)) >= 0.9 for row in WEAK_T]
    strong_mask = [max(softmax(row)) >= 0.65 for row in STRONG_T]
    assert weak_mask == [True, False, True, False] and False in strong_mask and True in strong_mask
    within = cross = 0.0
    for i in range(4):
        within += weak_mask[i] * (
            kd_by_hand(WEAK_S[i], WEAK_T[i], 4.0) + kd_by_hand(STRONG_S[i], STRONG_T[i], 4.0)
        )
        cross += strong_mask[i] * (
            kd_by_hand(STRONG_S[i], WEAK_T[i], 4.0) + kd_by_hand(WEAK_S[i], STRONG_T[i], 4.0)
        )
    assert terms["crld_within"].item() == pytest.approx(2.0 * within / 4, rel=1e-5)
    assert terms["crld_cross"].item() == pytest.approx(0.5 * cross / 4, rel=1e-5)

    def cross_entropy(rows):
        return sum(-math.log(softmax(row)[y]) for row, y in zip(rows, LABELS, strict=True)) / 4

    assert terms["ce"].item() == pytest.approx(cross_entropy(WEAK_S), rel=1e-5)
    assert terms["ce_strong"].item() == pytest.approx(cross_entropy(STRONG_S), rel=1e-5)
    assert set(terms) == {"ce", "ce_strong", "crld_within", "crld_cross"}


def test_crld_declares_the_strong_view_and_refuses_other_classes():
    assert METHODS.get("crld").extra_views == ("strong",)
    other = FeatureShapes(None, (), (), (2,), (NUM_CLASSES + 1,))
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get("crld").check_pair(SHAPES, other)
