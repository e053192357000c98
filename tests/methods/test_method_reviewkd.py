"""ReviewKD (Chen et al., CVPR 2021, methods/reviewkd.py): the hierarchical context loss and the projection.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import INIT_STUDENT as STUDENT
from method_fixtures import INIT_TEACHER as TEACHER
from method_fixtures import build_init_stage as build
from method_fixtures import random_features

from kdbench.methods.reviewkd import ReviewKD, hierarchical_context_loss


def test_reviewkd_hcl_on_known_pyramids():
    checkerboard = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2 * 2.0 - 1  # +-1
    teacher = [checkerboard.view(1, 1, 4, 4), torch.full((1, 1, 1, 1), 3.0)]
    student = [torch.zeros(1, 1, 4, 4), torch.full((1, 1, 1, 1), 1.0)]
    # 4x4 level: full MSE 1; 2x2 and 1x1 poolings of a checkerboard are 0, weights 1/2, 1/4 (4x4 skipped)
    # 1x1 level: only the full MSE, (3 - 1)^2
    expected = (1.0 + 0.5 * 0 + 0.25 * 0) / (1 + 0.5 + 0.25) + 4.0
    assert hierarchical_context_loss(student, teacher).item() == pytest.approx(expected)


def test_reviewkd_projects_to_the_teacher_pyramid_and_warms_up():
    method = build(ReviewKD)
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    assert [p.shape[1:] for p in method.review(student)] == [(16, 1, 1), (16, 4, 4), (4, 8, 8)]
    method.set_epoch(1, 240)
    assert method.method_terms(student, teacher, None, None)["reviewkd"].item() == 0.0
    method.set_epoch(11, 240)
    half = method.method_terms(student, teacher, None, None)["reviewkd"]
    method.set_epoch(21, 240)
    full = method.method_terms(student, teacher, None, None)["reviewkd"]
    assert half.item() == pytest.approx(full.item() / 2, rel=1e-5)
