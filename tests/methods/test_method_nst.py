"""NST (Huang & Wang 2017, methods/nst.py): the squared MMD of normalised channel maps.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import build_between, dot, features, rows


def test_nst_is_the_squared_mmd_of_normalised_channel_maps():
    student = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)]
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]  # last stage pooled 4x4 -> 2x2

    def mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> float:
        total = 0.0
        for sample_s, sample_t in zip(f_s, f_t, strict=True):  # per sample, averaged below
            s = [[x / math.hypot(*c) for x in c] for c in rows(sample_s.flatten(1))]
            t = [[x / math.hypot(*c) for x in c] for c in rows(sample_t.flatten(1))]

            def k(a, b):
                return dot(a, b) ** 2  # polynomial kernel, d = 2, c = 0

            total += (
                sum(k(a, b) for a in t for b in t) / len(t) ** 2
                + sum(k(a, b) for a in s for b in s) / len(s) ** 2
                - 2 * sum(k(a, b) for a in s for b in t) / (len(s) * len(t))
            )
        return total / len(f_s)

    pooled_teacher = teacher[1].view(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = mmd(student[0], teacher[0]) + mmd(student[1], pooled_teacher)
    nst = build_between("nst")
    terms = nst.method_terms(features(stages=student), features(stages=teacher), None, None)
    assert terms["nst"].item() == pytest.approx(expected, rel=1e-5)
