"""Logit standardisation (Sun et al., CVPR 2024; methods/_shared.py): z-scored logits, the shared KD
term with `logit_std` computed by hand, and every logit method standardising when asked."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods._shared import standardize_logits
from kdbench.methods.base import Method, MethodContext, kd_kl_div

NUM_CLASSES = 5


def shapes(channels: list[int], sizes: list[int], pooled: int | None = None, classes: int = NUM_CLASSES):
    stages = tuple((c, s, s) for c, s in zip(channels, sizes, strict=True))
    return FeatureShapes(
        stem=(channels[0], sizes[0], sizes[0]),
        stages=stages,
        preact=stages,
        pooled=(pooled or channels[-1],),
        logits=(classes,),
    )


STUDENT = shapes([2, 3], [4, 2])
TEACHER = shapes([3, 4], [4, 4])  # same stage count, wider, larger last map


def context(student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER) -> MethodContext:
    return MethodContext(
        student, teacher, NUM_CLASSES, num_train=8, train_labels=torch.zeros(8, dtype=torch.long)
    )


def build_between(
    name: str, student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, **overrides
) -> Method:
    cls = METHODS.get(name)
    return cls(cls.resolve_hp(overrides), context(student, teacher))


def features(logits=None, pooled=None, stages=()) -> Features:
    return Features(logits=logits, pooled=pooled, stages=list(stages))


def rows(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.tolist()


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


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
