"""DIST (Huang et al., NeurIPS 2022, methods/dist.py): the Pearson relations written out by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import statistics

import pytest
import torch
from method_fixtures import (
    NUM_CLASSES,
    build_between,
    features,
    rows,
    softmax,
)


def test_dist_matches_pearson_relations():
    z_s, z_t = torch.randn(4, NUM_CLASSES) * 2, torch.randn(4, NUM_CLASSES) * 2
    tau = 4.0
    y_s = [softmax(row, tau) for row in rows(z_s)]
    y_t = [softmax(row, tau) for row in rows(z_t)]
    inter = 1 - statistics.fmean(statistics.correlation(s, t) for s, t in zip(y_s, y_t, strict=True))
    columns_s, columns_t = list(zip(*y_s, strict=True)), list(zip(*y_t, strict=True))
    intra = 1 - statistics.fmean(
        statistics.correlation(s, t) for s, t in zip(columns_s, columns_t, strict=True)
    )
    dist = build_between("dist")  # beta = gamma = 2
    terms = dist.method_terms(features(logits=z_s), features(logits=z_t), None, None)
    assert terms["dist_inter"].item() == pytest.approx(2 * tau**2 * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(2 * tau**2 * intra, rel=1e-4)
    # identical predictions correlate perfectly (up to the authors' eps in the denominator)
    same = dist.method_terms(features(logits=z_t), features(logits=z_t), None, None)
    assert same["dist_inter"].item() == pytest.approx(0.0, abs=1e-3)
    assert same["dist_intra"].item() == pytest.approx(0.0, abs=1e-3)
