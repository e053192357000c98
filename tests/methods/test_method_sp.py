"""SP (Tung & Mori, ICCV 2019, methods/sp.py): the Gram matrices computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import NUM_CLASSES, STUDENT, build_between, features

from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import PairNotSupportedError


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
