"""Logit standardisation (Sun et al., CVPR 2024; methods/_shared.py): z-scored logits, the shared KD
term with `logit_std` computed by hand, and every logit method standardising when asked."""

from __future__ import annotations

import statistics

import pytest
import torch
from method_fixtures import (
    NUM_CLASSES,
    build_between,
    context,
    features,
    kl,
    rows,
    softmax,
)

from kdbench.methods._shared import standardize_logits
from kdbench.methods.base import Method, kd_kl_div


def test_standardized_logits_have_zero_mean_and_unit_std():
    logits = torch.tensor([[1.0, 2.0, 3.0, 6.0], [-4.0, 0.0, 0.5, 10.0]])
    z = standardize_logits(logits)
    for row_in, row_out in zip(rows(logits), rows(z), strict=True):
        mean, std = statistics.fmean(row_in), statistics.pstdev(row_in)
        assert row_out == pytest.approx([(v - mean) / std for v in row_in], rel=1e-6)
        assert statistics.fmean(row_out) == pytest.approx(0.0, abs=1e-6)
        assert statistics.pstdev(row_out) == pytest.approx(1.0, rel=1e-6)


def test_shared_kd_term_with_logit_std_equals_hand_computation():
    z_s = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 3.0, 1.0, 1.0]])
    z_t = torch.tensor([[4.0, 8.0, 1.0, -6.0], [2.0, 2.5, 0.0, 9.0]])
    base_temperature, kd_weight = 2.0, 9.0  # the paper's CIFAR-100 recipe

    def zscore(row):
        mean, std = statistics.fmean(row), statistics.pstdev(row)
        return [(v - mean) / std for v in row]

    expected = (
        kd_weight
        * base_temperature**2
        * statistics.fmean(
            kl(softmax(zscore(t), base_temperature), softmax(zscore(s), base_temperature))
            for s, t in zip(rows(z_s), rows(z_t), strict=True)
        )
    )
    hp = Method.resolve_hp({"kd_weight": kd_weight, "temperature": base_temperature, "logit_std": True})
    method = Method(hp, context())
    labels = torch.tensor([0, 1])
    terms = method.losses(features(logits=z_s), features(logits=z_t), labels, None)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-5)
    # the student need not match the teacher's logit range: scaling and shifting it changes nothing
    rescaled = method.losses(features(logits=3 * z_s + 7), features(logits=z_t), labels, None)
    assert rescaled["kd"].item() == pytest.approx(expected, rel=1e-5)
    plain = Method(Method.resolve_hp({"kd_weight": kd_weight, "temperature": base_temperature}), context())
    plain_kd = plain.losses(features(logits=z_s), features(logits=z_t), labels, None)["kd"]
    assert plain_kd.item() == pytest.approx(kd_weight * kd_kl_div(z_s, z_t, base_temperature).item())


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_logit_methods_standardize_when_asked(name):
    z_s, z_t, labels = torch.randn(3, NUM_CLASSES) * 5, torch.randn(3, NUM_CLASSES), torch.tensor([0, 1, 2])
    standardized = build_between(name, logit_std=True).method_terms(
        features(logits=z_s), features(logits=z_t), labels, None
    )
    by_hand = build_between(name).method_terms(
        features(logits=standardize_logits(z_s)), features(logits=standardize_logits(z_t)), labels, None
    )
    assert standardized.keys() == by_hand.keys()
    for term in standardized:
        assert standardized[term].item() == pytest.approx(by_hand[term].item(), rel=1e-6)
