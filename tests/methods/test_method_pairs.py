"""Pair checks shared by families of methods (methods/base.py's `require_*`): a matching pair is
accepted, stage-wise methods refuse unequal stage counts and token features, logit methods refuse
different class counts."""

from __future__ import annotations

import pytest
from method_fixtures import NUM_CLASSES, STUDENT, TEACHER, shapes

from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import PairNotSupportedError

METHOD_NAMES = ("sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "dist")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_matching_pair_is_accepted(name):
    METHODS.get(name).check_pair(STUDENT, TEACHER)


@pytest.mark.parametrize("name", ["vid", "nst"])
def test_stagewise_methods_refuse_unequal_stage_counts(name):
    three_stages = shapes([2, 3, 4], [8, 4, 2])
    with pytest.raises(PairNotSupportedError, match="2 stages, the teacher 3"):
        METHODS.get(name).check_pair(STUDENT, three_stages)


@pytest.mark.parametrize("name", ["vid", "nst"])
def test_stagewise_methods_refuse_token_features(name):
    tokens = FeatureShapes(
        stem=None, stages=((16, 8), (16, 8)), preact=(), pooled=(8,), logits=(NUM_CLASSES,)
    )
    with pytest.raises(PairNotSupportedError, match=r"\(C, H, W\)"):
        METHODS.get(name).check_pair(STUDENT, tokens)


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_logit_methods_refuse_different_class_counts(name):
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get(name).check_pair(STUDENT, shapes([3, 4], [4, 4], classes=NUM_CLASSES + 1))
