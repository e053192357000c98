"""AB (Heo et al., AAAI 2019, methods/ab.py): the activation-boundary margin loss on hand-picked values.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import BATCH, random_features
from method_fixtures import INIT_STUDENT as STUDENT
from method_fixtures import INIT_TEACHER as TEACHER
from method_fixtures import build_init_stage as build

from kdbench.methods.ab import AB, activation_boundary_loss


def test_ab_margin_loss_on_hand_picked_values():
    source = torch.tensor([-2.0, -0.5, 0.5, 2.0, -0.5, 0.5])
    target = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 0.0])
    # teacher active (t > 0): relu(1 - s)^2 -> 9, 2.25, 0.25, 0; inactive: relu(1 + s)^2 -> 0.25, 2.25
    expected = 9 + 2.25 + 0.25 + 0 + 0.25 + 2.25
    assert activation_boundary_loss(source, target, margin=1.0).item() == pytest.approx(expected)


def test_ab_stage_weights_batch_and_scale():
    method = build(AB)
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    # stage 0 has equal shapes: identity connector; stage 1 goes through its conv + BN connector
    per_stage = [
        activation_boundary_loss(student.preact[0], teacher.preact[0], 1.0),
        activation_boundary_loss(method.connectors[1](student.preact[1]), teacher.preact[1], 1.0),
    ]
    expected = (0.5 * per_stage[0] + 1.0 * per_stage[1]) / BATCH * 3 / 1000
    assert method.ab_loss(student, teacher)["ab"].item() == pytest.approx(expected.item(), rel=1e-5)
