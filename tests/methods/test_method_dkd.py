"""DKD (Zhao et al., CVPR 2022, methods/dkd.py): the binary / non-target decomposition and the warm-up.

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
    kl,
    rows,
    softmax,
)

from kdbench.methods.base import kd_kl_div


def dkd_parts_by_hand(z_s: list[float], z_t: list[float], target: int, temperature: float):
    """The paper's decomposition: b = [p_t, 1 - p_t], p^_i = p_i / (1 - p_t) for i != t."""
    p_s, p_t = softmax(z_s, temperature), softmax(z_t, temperature)
    b_s, b_t = [p_s[target], 1 - p_s[target]], [p_t[target], 1 - p_t[target]]
    hat_s = [p / (1 - p_s[target]) for i, p in enumerate(p_s) if i != target]
    hat_t = [p / (1 - p_t[target]) for i, p in enumerate(p_t) if i != target]
    return kl(b_t, b_s), kl(hat_t, hat_s), p_t[target]


def test_dkd_terms_match_the_binary_and_non_target_decomposition():
    z_s, z_t = torch.randn(3, NUM_CLASSES) * 3, torch.randn(3, NUM_CLASSES) * 3
    labels = torch.tensor([0, 4, 2])
    temperature = 4.0
    samples = zip(rows(z_s), rows(z_t), labels.tolist(), strict=True)
    parts = [dkd_parts_by_hand(s, t, y, temperature) for s, t, y in samples]
    tckd = statistics.fmean(p[0] for p in parts) * temperature**2
    nckd = statistics.fmean(p[1] for p in parts) * temperature**2
    dkd = build_between("dkd")  # alpha 1, beta 8
    terms = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
    assert terms["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["dkd_nckd"].item() == pytest.approx(8 * nckd, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_dkd_with_unit_weights_recovers_classical_kd_by_the_decomposition_identity(seed):
    # KD = TCKD + (1 - p_t^T) * NCKD holds per sample: one sample per batch
    generator = torch.Generator().manual_seed(seed)
    z_s = torch.randn(1, NUM_CLASSES, generator=generator) * 4
    z_t = torch.randn(1, NUM_CLASSES, generator=generator) * 4
    label = torch.tensor([seed % NUM_CLASSES])
    dkd = build_between("dkd", alpha=1.0, beta=1.0)
    terms = dkd.method_terms(features(logits=z_s), features(logits=z_t), label, None)
    teacher_target_prob = softmax(z_t[0].tolist(), 4.0)[label.item()]
    recomposed = terms["dkd_tckd"] + (1 - teacher_target_prob) * terms["dkd_nckd"]
    assert recomposed.item() == pytest.approx(kd_kl_div(z_s, z_t, 4.0).item(), rel=1e-5)
    tckd, nckd, _ = dkd_parts_by_hand(z_s[0].tolist(), z_t[0].tolist(), label.item(), 4.0)
    by_hand = 4.0**2 * (tckd + (1 - teacher_target_prob) * nckd)
    assert kd_kl_div(z_s, z_t, 4.0).item() == pytest.approx(by_hand, rel=1e-5)


def test_dkd_warmup_ramps_linearly_and_scales_with_short_runs():
    dkd = build_between("dkd")
    z_s, z_t, labels = torch.randn(2, NUM_CLASSES), torch.randn(2, NUM_CLASSES), torch.tensor([1, 3])
    full = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
    expected_factors = [
        ((1, 240), 1 / 20),  # published: 20 of 240 epochs
        ((10, 240), 0.5),
        ((20, 240), 1.0),
        ((1, 24), 0.5),  # 24-epoch run: warm-up 20 * 24 / 240 = 2 epochs
        ((2, 24), 1.0),
        ((1, 480), 1 / 20),  # longer runs keep the published 20
    ]
    for (epoch, num_epochs), factor in expected_factors:
        dkd.set_epoch(epoch, num_epochs)
        ramped = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
        for name in ("dkd_tckd", "dkd_nckd"):
            assert ramped[name].item() == pytest.approx(factor * full[name].item(), rel=1e-6)
    no_warmup = build_between("dkd", warmup_epochs=0)
    no_warmup.set_epoch(1, 240)
    assert no_warmup.warmup_factor == 1.0
