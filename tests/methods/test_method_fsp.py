"""FSP (Yim et al., CVPR 2017, methods/fsp.py): FSP matrices of hand-made features and the pair refusals.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import INIT_STUDENT as STUDENT
from method_fixtures import INIT_TEACHER as TEACHER
from method_fixtures import shapes

from kdbench.methods.base import PairNotSupportedError
from kdbench.methods.fsp import FSP, fsp_matrix


def test_fsp_matrix_of_hand_made_features():
    lower = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    upper = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]], [[1.0, -1.0], [1.0, -1.0]]]])
    expected = torch.empty(2, 3)
    for i in range(2):
        for j in range(3):
            expected[i, j] = (
                sum(lower[0, i, h, w] * upper[0, j, h, w] for h in range(2) for w in range(2)) / 4
            )
    # row 0: (1+2+3+4)/4, (2+8)/4, (1-2+3-4)/4; row 1: 2/4, 2/4, -2/4
    assert torch.allclose(expected, torch.tensor([[2.5, 2.5, -0.5], [0.5, 0.5, -0.5]]))
    assert torch.allclose(fsp_matrix(lower, upper)[0], expected)


def test_fsp_matrix_pools_the_larger_map():
    lower = torch.arange(16.0).reshape(1, 1, 4, 4)
    upper = torch.ones(1, 1, 2, 2)
    assert fsp_matrix(lower, upper).item() == pytest.approx(lower.mean().item())


def test_fsp_refuses_different_stage_counts():
    with pytest.raises(PairNotSupportedError, match=r"^fsp: student has 2 stages, teacher has 3") as error:
        FSP.check_pair(STUDENT, shapes([4, 8, 16], [8, 4, 2]))
    assert "\n" not in str(error.value)


def test_fsp_refuses_different_channels():
    with pytest.raises(PairNotSupportedError, match=r"^fsp: FSP layer channels differ") as error:
        FSP.check_pair(STUDENT, TEACHER)
    assert (
        "[4, 4, 8]" in str(error.value) and "[4, 4, 16]" in str(error.value) and "\n" not in str(error.value)
    )
