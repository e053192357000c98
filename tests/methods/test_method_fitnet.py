"""FitNet (Romero et al., ICLR 2015, methods/fitnet.py): the hint regressor and its MSE.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import PAIR_LABELS as LABELS
from method_fixtures import build, feature_shapes, features_of, method_context

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.methods.base import PairNotSupportedError


def test_fitnet_with_identity_regressor_is_plain_mse_on_the_second_stage():
    student_shapes = feature_shapes([(3, 4, 4), (2, 2, 2), (2, 1, 1)])
    teacher_shapes = feature_shapes([(5, 4, 4), (2, 2, 2), (4, 1, 1)])
    method = build("fitnet", method_context(student_shapes, teacher_shapes))  # hint_layer 2 -> stages[1]
    regressor = method.regressor
    assert regressor.conv.kernel_size == (1, 1)
    with torch.no_grad():
        regressor.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        regressor.conv.bias.zero_()
        regressor.bn.running_var.fill_(1 - regressor.bn.eps)  # BN(x) = x in eval mode
    method.eval()

    student, teacher = features_of(student_shapes, batch=1), features_of(teacher_shapes, batch=1)
    student.stages[1] = torch.arange(8.0).view(1, 2, 2, 2)  # values 0..7, untouched by the ReLU
    teacher.stages[1] = torch.ones(1, 2, 2, 2)
    expected = sum((value - 1) ** 2 for value in range(8)) / 8  # = 11.5

    terms = method.method_terms(student, teacher, LABELS[:1], torch.tensor([0]))
    assert terms["hint"].item() == pytest.approx(expected)
    assert method.losses(student, teacher, LABELS[:1], torch.tensor([0]))["hint"].item() == pytest.approx(
        100 * expected
    )


@pytest.mark.parametrize(
    ("student_hint", "teacher_hint", "conv_type"),
    [
        ((4, 8, 8), (6, 4, 4), torch.nn.Conv2d),  # twice the size: 3x3 stride 2
        ((4, 4, 4), (6, 8, 8), torch.nn.ConvTranspose2d),  # half the size: 4x4 transposed stride 2
        ((4, 6, 6), (6, 4, 4), torch.nn.Conv2d),  # larger: valid 3x3 conv
    ],
)
def test_fitnet_regressor_resizes_to_the_teacher_hint(student_hint, teacher_hint, conv_type):
    student_shapes = feature_shapes([(2, 8, 8), student_hint])
    teacher_shapes = feature_shapes([(2, 8, 8), teacher_hint])
    method = build("fitnet", method_context(student_shapes, teacher_shapes))
    assert type(method.regressor.conv) is conv_type
    assert method.regressor(torch.rand(2, *student_hint)).shape[1:] == teacher_hint


def test_fitnet_hint_layer_zero_is_the_stem_and_smaller_student_maps_are_refused():
    student_shapes = feature_shapes([(2, 3, 3), (2, 3, 3)], stem=(2, 4, 4))
    teacher_shapes = feature_shapes([(2, 8, 8), (2, 8, 8)], stem=(5, 4, 4))
    method = build("fitnet", method_context(student_shapes, teacher_shapes), hint_layer=0)
    assert method.regressor(torch.rand(2, 2, 4, 4)).shape == (2, 5, 4, 4)
    with pytest.raises(PairNotSupportedError, match="fitnet: cannot regress a 3x3 student map onto a 8x8"):
        method.check_pair(student_shapes, teacher_shapes)
