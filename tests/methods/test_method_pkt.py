"""PKT (Passalis & Tefas, ECCV 2018, methods/pkt.py): cosine-similarity probabilities computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from method_fixtures import build_between, dot, features, rows


def test_pkt_matches_cosine_similarity_probabilities():
    student, teacher = torch.randn(3, 4), torch.randn(3, 6)
    eps = 1e-7

    def conditional(points):
        cos = [[dot(a, b) / (math.hypot(*a) * math.hypot(*b)) for b in points] for a in points]
        kernel = [[(c + 1) / 2 for c in row] for row in cos]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = conditional(rows(student)), conditional(rows(teacher))
    expected = statistics.fmean(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(3) for j in range(3)
    )
    pkt = build_between("pkt")
    terms = pkt.method_terms(features(pooled=student), features(pooled=teacher), None, None)
    assert terms["pkt"].item() == pytest.approx(expected, rel=1e-4, abs=1e-8)
    same = pkt.method_terms(features(pooled=2 * teacher), features(pooled=teacher), None, None)
    assert same["pkt"].item() == pytest.approx(0.0, abs=1e-7)  # cosine kernel: scale does not matter
