"""ICKD (Liu et al., ICCV 2021, methods/ickd.py): the row-normalised channel Gram matrices and the
student's 1x1 embedding.

Each loss is checked against the authors' formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError, method_class


def shapes_of(stages, logits=(3,)) -> FeatureShapes:
    stages = tuple(stages)
    return FeatureShapes(stem=None, stages=stages, preact=stages, pooled=(3,), logits=logits)


STUDENT = shapes_of([(2, 4, 4), (2, 2, 2)])
TEACHER = shapes_of([(3, 4, 4), (3, 3, 3)])  # wider, and a larger last map


def build(student=STUDENT, teacher=TEACHER, **overrides) -> Method:
    labels = torch.arange(6) % 3
    context = MethodContext(student, teacher, 3, len(labels), labels)
    cls = lookup(METHODS, "method", "ickd")
    return cls(cls.resolve_hp(overrides), context)


def gram_rows_normalised(channels):
    """G = F F^T over flattened channels, each row divided by its L2 norm."""
    gram = [[sum(a * b for a, b in zip(ci, cj, strict=True)) for cj in channels] for ci in channels]
    return [[g / math.sqrt(sum(x * x for x in row)) for g in row] for row in gram]


def ickd_by_hand(student_maps, teacher_maps):
    """sum over samples of ||G~_s - G~_t||_F^2 / (batch * C); maps as [sample][channel][flat position]."""
    total = 0.0
    for s_channels, t_channels in zip(student_maps, teacher_maps, strict=True):
        g_s, g_t = gram_rows_normalised(s_channels), gram_rows_normalised(t_channels)
        total += sum(
            (a - b) ** 2 for ra, rb in zip(g_s, g_t, strict=True) for a, b in zip(ra, rb, strict=True)
        )
    return total / (len(student_maps) * len(teacher_maps[0]))


def test_ickd_defaults_and_the_kl_variant_are_the_authors_scripts():
    hp = build().hp
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 2.5,
        "temperature": 4.0,
    }
    assert method_class("ickd+kd").resolve_hp()["kd_weight"] == 1.0


def test_ickd_matches_the_gram_formula_through_the_embedding():
    method = build(method_weight=1.0)
    conv, batchnorm = method.embed
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (2, 3, (1, 1), None)
    weights = [[1.0, 0.5], [-0.5, 2.0], [0.25, 1.0]]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights).view(3, 2, 1, 1))
    method.eval()  # BN with its initial running statistics: x / sqrt(1 + eps)
    generator = torch.Generator().manual_seed(3)
    student_map = torch.randn(2, 2, 2, 2, generator=generator)
    teacher_map = torch.randn(2, 3, 3, 3, generator=generator)
    terms = method.losses(
        Features(logits=torch.zeros(2, 3), pooled=None, stages=[None, student_map]),
        Features(logits=torch.zeros(2, 3), pooled=None, stages=[None, teacher_map]),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
    )
    assert terms.keys() == {"ce", "ickd"}
    scale = 1 / math.sqrt(1 + 1e-5)
    embedded = [
        [
            [scale * sum(w * s[c][p] for w, c in zip(row, range(2), strict=True)) for p in range(4)]
            for row in weights
        ]
        for s in student_map.flatten(2).tolist()
    ]
    expected = ickd_by_hand(embedded, teacher_map.flatten(2).tolist())
    assert terms["ickd"].item() == pytest.approx(expected, rel=1e-5)


def test_ickd_gives_zero_when_the_embedded_channels_are_proportional_to_the_teachers():
    # G~ is invariant to scaling a sample's map: a student map twice the teacher's matches it exactly
    method = build(student=shapes_of([(3, 2, 2)]), teacher=shapes_of([(3, 2, 2)]))
    with torch.no_grad():
        method.embed[0].weight.copy_(2 * torch.eye(3).view(3, 3, 1, 1))
    method.eval()
    teacher_map = torch.randn(2, 3, 2, 2)
    terms = method.method_terms(
        Features(logits=None, pooled=None, stages=[teacher_map.clone()]),
        Features(logits=None, pooled=None, stages=[teacher_map]),
        None,
        None,
    )
    assert terms["ickd"].item() == pytest.approx(0.0, abs=1e-10)


def test_ickd_refuses_pairs_it_cannot_serve():
    ickd = lookup(METHODS, "method", "ickd")
    with pytest.raises(PairNotSupportedError, match="ickd needs stage outputs"):
        ickd.check_pair(STUDENT, None)
    tokens = shapes_of([(16, 8), (16, 8)])
    with pytest.raises(PairNotSupportedError, match=r"ickd correlates the channels of \(C, H, W\) maps"):
        ickd.check_pair(STUDENT, tokens)


def test_ickd_gram_stays_finite_under_fp16_autocast():
    # 4 positions of activations near 300: a Gram entry near 4 * 300^2, past fp16's 65504
    method = build(student=shapes_of([(3, 2, 2)]), teacher=shapes_of([(3, 2, 2)])).eval()
    student_map, teacher_map = 300 + torch.rand(2, 3, 2, 2), 300 * torch.rand(2, 3, 2, 2)
    student = Features(logits=None, pooled=None, stages=[student_map])
    teacher = Features(logits=None, pooled=None, stages=[teacher_map])
    full = method.method_terms(student, teacher, None, None)["ickd"]
    with torch.autocast("cpu", dtype=torch.float16):
        mixed = method.method_terms(student, teacher, None, None)["ickd"]
    assert torch.isfinite(mixed) and mixed.item() == pytest.approx(full.item(), rel=1e-2, abs=1e-4)
