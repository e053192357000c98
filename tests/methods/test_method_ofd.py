"""OFD (Heo et al., ICCV 2019, methods/ofd.py): the partial L2, margins and connectors, recomputed with numpy.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import build, context_of, shapes_of
from torch import nn

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import PairNotSupportedError


def partial_l2_by_hand(student: np.ndarray, teacher: np.ndarray, margin: np.ndarray) -> float:
    """sum over elements of d_p(max(t, m_c), s), divided by the batch: the paper's case rule."""
    total = 0.0
    n, c, h, w = student.shape
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    target = max(teacher[i, ch, y, x], margin[ch])
                    s = student[i, ch, y, x]
                    if s <= target <= 0:
                        continue
                    total += (target - s) ** 2
    return total / n


def test_ofd_partial_l2_follows_the_case_rule():
    from kdbench.methods.ofd import partial_l2

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 2, 2, generator=generator)
    teacher = torch.randn(2, 3, 2, 2, generator=generator)
    margin = torch.tensor([-0.5, -1.0, -0.2]).view(1, 3, 1, 1)
    expected = partial_l2_by_hand(student.numpy(), teacher.numpy(), margin.flatten().numpy())
    assert partial_l2(student, teacher, margin).item() == pytest.approx(expected, rel=1e-5)


def test_ofd_margin_is_the_mean_negative_response_or_minus_three_std():
    from kdbench.methods.ofd import empirical_margin

    preact = torch.tensor(
        [
            [[[-1.0, 2.0], [-3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]],
            [[[0.5, -2.0], [1.0, 1.0]], [[2.0, 2.0], [5.0, 1.0]]],
        ]
    )  # channel 0 has negatives -1, -3, -2; channel 1 has none
    margin = empirical_margin(preact).flatten().tolist()
    channel_1 = preact[:, 1].flatten().numpy()
    assert margin[0] == pytest.approx(-2.0)
    assert margin[1] == pytest.approx(-3 * float(np.std(channel_1)), rel=1e-5)


def test_ofd_loss_weights_stages_by_depth_and_fixes_margins_on_the_first_batch():
    student_shapes = shapes_of([(2, 4, 4), (2, 2, 2)])
    teacher_shapes = shapes_of([(3, 8, 8), (2, 4, 4), (2, 2, 2)])  # one stage more: the last two pair
    method = build("ofd", context_of(student_shapes, teacher_shapes))
    assert [m[0].in_channels for m in method.connectors] == [2, 2]
    method.connectors = nn.ModuleList([nn.Identity(), nn.Identity()])  # the connector's own test is below

    generator = torch.Generator().manual_seed(1)
    student = [torch.randn(2, *s, generator=generator) for s in student_shapes.preact]
    teacher = [torch.randn(2, *s, generator=generator) for s in teacher_shapes.preact]
    terms = method.method_terms(
        Features(logits=None, pooled=None, preact=student),
        Features(logits=None, pooled=None, preact=teacher),
        LABELS,
        LABELS,
    )
    margins = []
    for t in teacher[1:]:  # the margin by hand: mean of the negatives of each channel
        values = t.transpose(0, 1).reshape(t.shape[1], -1).numpy()
        margins.append(np.array([row[row < 0].mean() for row in values]))
    expected = partial_l2_by_hand(student[0].numpy(), teacher[1].numpy(), margins[0]) / 2
    expected += partial_l2_by_hand(student[1].numpy(), teacher[2].numpy(), margins[1])
    assert terms["ofd"].item() == pytest.approx(expected, rel=1e-5)

    # a second batch reuses the first batch's margins
    shifted = [t - 5 for t in teacher]
    method.method_terms(
        Features(logits=None, pooled=None, preact=student),
        Features(logits=None, pooled=None, preact=shifted),
        LABELS,
        LABELS,
    )
    assert method.margin1.flatten().tolist() == pytest.approx(margins[1].tolist(), rel=1e-5)
    assert method.state_dict()["margins_set"].item() is True


def test_ofd_pools_the_teacher_to_the_student_and_connects_with_conv_bn():
    student_shapes = shapes_of([(2, 2, 2)])
    teacher_shapes = shapes_of([(3, 4, 4)])
    method = build("ofd", context_of(student_shapes, teacher_shapes))
    conv, bn = method.connectors[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (2, 3, (1, 1), None)
    assert isinstance(bn, nn.BatchNorm2d)
    method.eval()
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 2, 2, 2, generator=generator)
    teacher = torch.randn(2, 3, 4, 4, generator=generator)
    terms = method.method_terms(
        Features(logits=None, pooled=None, preact=[student]),
        Features(logits=None, pooled=None, preact=[teacher]),
        LABELS,
        LABELS,
    )
    with torch.no_grad():
        regressed = bn(conv(student)).numpy()
    pooled = teacher.numpy().reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    values = teacher.transpose(0, 1).reshape(3, -1).numpy()
    margin = np.array([row[row < 0].mean() for row in values])
    assert terms["ofd"].item() == pytest.approx(partial_l2_by_hand(regressed, pooled, margin), rel=1e-5)


def test_ofd_refuses_a_teacher_map_smaller_than_the_student_map():
    with pytest.raises(PairNotSupportedError, match="ofd"):
        lookup(METHODS, "method", "ofd").check_pair(shapes_of([(2, 4, 4)]), shapes_of([(2, 2, 2)]))
