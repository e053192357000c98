"""NKD (Yang et al., ICCV 2023, methods/nkd.py): the target term and the normalised non-target term.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import TRIO_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import TRIO_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import logits_features

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError


def shapes_of(logits=(4,)) -> FeatureShapes:
    return FeatureShapes(stem=None, stages=((2, 2, 2),), preact=((2, 2, 2),), pooled=(3,), logits=logits)


def build(**overrides) -> Method:
    labels = torch.arange(8) % 4
    context = MethodContext(shapes_of(), shapes_of(), 4, len(labels), labels)
    method_class = lookup(METHODS, "method", "nkd")
    return method_class(method_class.resolve_hp(overrides), context)


def softmax_by_hand(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def nkd_by_hand(student, teacher, labels, lam, gamma):
    """The paper's Eq. 8, sample by sample: N(.) renormalises the non-target probabilities at lambda."""
    total = 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        target_part = -softmax_by_hand(t_row)[label] * math.log(softmax_by_hand(s_row)[label])
        s_lam, t_lam = softmax_by_hand(s_row, lam), softmax_by_hand(t_row, lam)
        rest = [k for k in range(len(s_row)) if k != label]
        s_norm = {k: s_lam[k] / sum(s_lam[j] for j in rest) for k in rest}
        t_norm = {k: t_lam[k] / sum(t_lam[j] for j in rest) for k in rest}
        non_target_part = -sum(t_norm[k] * math.log(s_norm[k]) for k in rest)
        total += target_part + gamma * lam**2 * non_target_part
    return total / len(labels)


def test_nkd_defaults_are_the_authors_cifar_config():
    hp = build().hp
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature", "gamma")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 3.0,
        "gamma": 3.5,
    }


@pytest.mark.parametrize(("lam", "gamma"), [(3.0, 3.5), (1.0, 1.5), (2.0, 0.0)])
def test_nkd_matches_the_paper_sample_by_sample(lam, gamma):
    method = build(temperature=lam, gamma=gamma)
    terms = method.losses(logits_features(STUDENT_LOGITS), logits_features(TEACHER_LOGITS), LABELS, LABELS)
    assert terms.keys() == {"ce", "nkd"}
    expected = nkd_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, lam, gamma)
    assert terms["nkd"].item() == pytest.approx(expected, rel=1e-5)


def test_nkd_target_gradient_is_the_teachers_target_probability_times_the_student_error():
    # gamma 0 leaves -T_t log S_t: d/dz_s,k = T_t * (S_k - [k == t]) / batch, nothing through the teacher
    method = build(gamma=0.0)
    student_logits = STUDENT_LOGITS.clone().requires_grad_(True)
    teacher_logits = TEACHER_LOGITS.clone().requires_grad_(True)
    loss = method.method_terms(
        logits_features(student_logits), logits_features(teacher_logits), LABELS, LABELS
    )
    loss["nkd"].backward()
    assert teacher_logits.grad is None
    for i, (s_row, t_row, label) in enumerate(
        zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), LABELS.tolist(), strict=True)
    ):
        weight = softmax_by_hand(t_row)[label]
        expected = [weight * (p - (k == label)) / 3 for k, p in enumerate(softmax_by_hand(s_row))]
        assert student_logits.grad[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_nkd_refuses_different_class_counts():
    with pytest.raises(PairNotSupportedError, match="nkd compares class distributions"):
        lookup(METHODS, "method", "nkd").check_pair(shapes_of(), shapes_of(logits=(5,)))
