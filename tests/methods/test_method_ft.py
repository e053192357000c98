"""FT (Kim et al., NeurIPS 2018, methods/ft.py): the normalised factors, their L1 and the paraphraser's init stage.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import INIT_STUDENT as STUDENT
from method_fixtures import INIT_TEACHER as TEACHER
from method_fixtures import build_init_stage as build
from method_fixtures import random_features

from kdbench.methods.ft import FT, factor_transfer_loss


def test_ft_normalised_factor_and_l1():
    # one sample, 2 channels, 1x2 map; factor map = mean_c(F^2) per position, then L2-normalised
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # mean_c F^2 = [1, 2]
    teacher = torch.tensor([[[[3.0, 0.0]], [[0.0, 0.0]]]])  # mean_c F^2 = [4.5, 0]
    student_unit = [1 / math.sqrt(5), 2 / math.sqrt(5)]
    teacher_unit = [1.0, 0.0]
    expected = (abs(student_unit[0] - teacher_unit[0]) + abs(student_unit[1] - teacher_unit[1])) / 2
    assert factor_transfer_loss(student, teacher).item() == pytest.approx(expected)


def test_ft_pools_the_larger_factor():
    student = torch.ones(1, 3, 4, 4)
    teacher = torch.ones(1, 2, 2, 2)
    assert factor_transfer_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_ft_init_loss_reconstructs_the_teacher_only():
    method = build(FT)
    student, teacher = random_features(STUDENT, True), random_features(TEACHER, False)
    loss = sum(method.init_stage().loss(student, teacher).values())
    loss.backward()
    assert all(s.grad is None for s in student.stages)
    assert all(p.grad is not None for p in method.paraphraser.parameters())
