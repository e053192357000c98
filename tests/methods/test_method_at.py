"""AT (Zagoruyko & Komodakis, ICLR 2017, methods/at.py): attention maps computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import PAIR_LABELS as LABELS
from method_fixtures import PAIR_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import PAIR_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import build, feature_shapes, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import PairNotSupportedError


def test_at_on_hand_computed_attention_maps():
    # Stage 1. Student: two channels, both [[1, 0], [0, 1]]
    #            -> mean_c f^2 = [[1, 0], [0, 1]] -> Q_s = (1, 0, 0, 1) / sqrt2.
    #          Teacher: one channel [[2, 0], [0, 0]] -> [[4, 0], [0, 0]] -> Q_t = (1, 0, 0, 0).
    #          mean of squared differences = ((1/sqrt2 - 1)^2 + 1/2) / 4 = (2 - sqrt2) / 4.
    # Stage 2. Uniform maps on both sides -> 0.
    student_stage1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 2, 2, 2)
    teacher_stage1 = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])
    student_stages = [student_stage1, torch.ones(1, 1, 2, 2)]
    teacher_stages = [teacher_stage1, 2 * torch.ones(1, 3, 2, 2)]

    student_shapes = feature_shapes([tuple(s.shape[1:]) for s in student_stages])
    teacher_shapes = feature_shapes([tuple(t.shape[1:]) for t in teacher_stages])
    method = build("at", method_context(student_shapes, teacher_shapes))
    student = Features(logits=STUDENT_LOGITS[:1], pooled=torch.zeros(1, 3), stages=student_stages)
    teacher = Features(logits=TEACHER_LOGITS[:1], pooled=torch.zeros(1, 3), stages=teacher_stages)

    expected = (2 - math.sqrt(2)) / 4
    assert method.method_terms(student, teacher, LABELS[:1], torch.tensor([0]))["at"].item() == pytest.approx(
        expected
    )
    assert method.losses(student, teacher, LABELS[:1], torch.tensor([0]))["at"].item() == pytest.approx(
        1000 * expected
    )


def test_at_pools_the_larger_map_to_the_smaller_size():
    # Student 4x4 of ones -> 2x2 of ones -> (1/2, 1/2, 1/2, 1/2); teacher (1, 0, 0, 0) as above.
    # Squared differences 1/4 each -> mean 1/4.
    student_stages = [torch.ones(1, 1, 4, 4)]
    teacher_stages = [torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])]
    shapes_s, shapes_t = feature_shapes([(1, 4, 4)]), feature_shapes([(1, 2, 2)])
    method = build("at", method_context(shapes_s, shapes_t))
    method.check_pair(shapes_s, shapes_t)
    terms = method.method_terms(
        Features(logits=STUDENT_LOGITS[:1], pooled=torch.zeros(1, 3), stages=student_stages),
        Features(logits=TEACHER_LOGITS[:1], pooled=torch.zeros(1, 3), stages=teacher_stages),
        LABELS[:1],
        torch.tensor([0]),
    )
    assert terms["at"].item() == pytest.approx(0.25)


def test_at_refuses_pairs_with_different_stage_counts():
    at = lookup(METHODS, "method", "at")
    with pytest.raises(PairNotSupportedError) as refusal:
        at.check_pair(feature_shapes([(2, 8, 8)] * 3), feature_shapes([(2, 8, 8)] * 4))
    message = str(refusal.value)
    assert "student has 3 stages and the teacher 4" in message and "one to one" in message
