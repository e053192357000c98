"""WTTM and TTM (Zheng & Yang, ICLR 2024, methods/wttm.py): the transformed-teacher KL, weighted and not.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import logits_features

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.errors import ConfigError
from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError


def shapes_of(logits=(3,)) -> FeatureShapes:
    return FeatureShapes(stem=None, stages=((2, 2, 2),), preact=((2, 2, 2),), pooled=(3,), logits=logits)


def build(name: str, **overrides) -> Method:
    labels = torch.arange(6) % 3
    context = MethodContext(shapes_of(), shapes_of(), 3, len(labels), labels)
    method_class = lookup(METHODS, "method", name)
    return method_class(method_class.resolve_hp(overrides), context)


STUDENT_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [1.0, 1.0, 1.0]])
TEACHER_LOGITS = torch.tensor([[6.0, -0.5, 0.2], [1.2, 0.4, -0.3], [0.0, 9.5, 0.5]])


def softmax_by_hand(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def ttm_rows_by_hand(student, teacher, gamma):
    """Per sample (U_gamma(p_t), KL(p_t^gamma / U || p_s)): the paper's Eq. 7 and its power sum."""
    rows = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p_t, p_s = softmax_by_hand(t_row), softmax_by_hand(s_row)
        power_sum = sum(p**gamma for p in p_t)
        target = [p**gamma / power_sum for p in p_t]
        rows.append((power_sum, sum(q * math.log(q / p) for q, p in zip(target, p_s, strict=True))))
    return rows


def test_defaults_are_the_authors_readme_examples():
    assert {k: build("wttm").hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "gamma")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 4.0,
        "gamma": 0.2,
    }
    assert {k: build("ttm").hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "gamma")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 45.0,
        "gamma": 0.1,
    }


def test_wttm_weights_each_sample_kl_to_the_transformed_teacher_by_its_power_sum():
    method = build("wttm")
    student_logits = STUDENT_LOGITS.clone().requires_grad_(True)
    terms = method.losses(logits_features(student_logits), logits_features(TEACHER_LOGITS), LABELS, LABELS)
    assert terms.keys() == {"ce", "wttm"}
    rows = ttm_rows_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, 0.2)
    expected = sum(weight * kl for weight, kl in rows) / len(rows)
    assert terms["wttm"].item() == pytest.approx(4.0 * expected, rel=1e-5)
    # the weight carries no gradient: d/dz_s of the term is 4 * U_i * (p_s - p~_t) / batch
    terms["wttm"].backward()
    for i, (s_row, t_row) in enumerate(zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), strict=True)):
        p_s, p_t = softmax_by_hand(s_row), softmax_by_hand(t_row)
        power_sum = sum(p**0.2 for p in p_t)
        expected_grad = [
            4.0 * power_sum * (ps - pt**0.2 / power_sum) / 3 for ps, pt in zip(p_s, p_t, strict=True)
        ]
        assert student_logits.grad[i].tolist() == pytest.approx(expected_grad, rel=1e-4, abs=1e-7)


def test_ttm_is_the_unweighted_mean_and_equals_kd_with_the_teacher_alone_tempered():
    method = build("ttm", gamma=0.25)
    terms = method.method_terms(
        logits_features(STUDENT_LOGITS), logits_features(TEACHER_LOGITS), LABELS, LABELS
    )
    rows = ttm_rows_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, 0.25)
    assert terms["ttm"].item() == pytest.approx(sum(kl for _, kl in rows) / len(rows), rel=1e-5)
    # p_t^gamma / U = softmax(z_t / T) with T = 1 / gamma: KL(softmax(z_t / 4) || softmax(z_s)) by hand
    tempered = [softmax_by_hand([v / 4 for v in row]) for row in TEACHER_LOGITS.tolist()]
    plain = [softmax_by_hand(row) for row in STUDENT_LOGITS.tolist()]
    kd_one_sided = (
        sum(
            sum(q * math.log(q / p) for q, p in zip(q_row, p_row, strict=True))
            for q_row, p_row in zip(tempered, plain, strict=True)
        )
        / 3
    )
    assert terms["ttm"].item() == pytest.approx(kd_one_sided, rel=1e-5)


def test_gamma_one_makes_ttm_plain_kl_and_wttm_the_same_weight_one():
    # U_1(p) = 1: with gamma 1 both are KL(p_t || p_s) at T = 1
    wttm, ttm = build("wttm", gamma=1.0), build("ttm", gamma=1.0)
    student, teacher = logits_features(STUDENT_LOGITS), logits_features(TEACHER_LOGITS)
    plain_kl = sum(kl for _, kl in ttm_rows_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, 1.0)) / 3
    assert wttm.method_terms(student, teacher, LABELS, LABELS)["wttm"].item() == pytest.approx(
        plain_kl, rel=1e-5
    )
    assert ttm.method_terms(student, teacher, LABELS, LABELS)["ttm"].item() == pytest.approx(
        plain_kl, rel=1e-5
    )


@pytest.mark.parametrize("name", ["wttm", "ttm"])
def test_refuses_different_class_counts(name):
    with pytest.raises(PairNotSupportedError, match=f"{name} compares class distributions"):
        lookup(METHODS, "method", name).check_pair(shapes_of(), shapes_of(logits=(4,)))
    with pytest.raises(PairNotSupportedError, match=name):
        lookup(METHODS, "method", name).check_pair(shapes_of(), None)


@pytest.mark.parametrize("name", ["wttm", "ttm"])
@pytest.mark.parametrize("gamma", [0.0, -0.5])
def test_refuses_a_power_that_is_not_positive(name, gamma):
    with pytest.raises(ConfigError, match=f"{name}.gamma={gamma}"):
        build(name, gamma=gamma)
