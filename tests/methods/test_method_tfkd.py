"""Tf-KD (Yuan et al., CVPR 2020, methods/tfkd.py): the virtual teacher and the authors' loss, no teacher.

Each loss is checked against the authors' formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import TRIO_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import TRIO_TEACHER_LOGITS as TEACHER_LOGITS

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.errors import ConfigError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError

SHAPES = FeatureShapes(stem=None, stages=((2, 2, 2),), preact=((2, 2, 2),), pooled=(3,), logits=(4,))


def build(**overrides) -> Method:
    labels = torch.arange(8) % 4
    context = MethodContext(SHAPES, None, 4, len(labels), labels)
    method_class = lookup(METHODS, "method", "tfkd")
    return method_class(method_class.resolve_hp(overrides), context)


def softmax_by_hand(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def tfkd_kl_by_hand(student, labels, correct_prob, tau):
    """my_loss_function.py `loss_kd_regularization`: KLDivLoss()(log_softmax(z), softmax(u / tau)),
    the element-wise mean over N x K."""
    total, count = 0.0, 0
    for row, label in zip(student.tolist(), labels.tolist(), strict=True):
        classes = len(row)
        u = [correct_prob if k == label else (1 - correct_prob) / (classes - 1) for k in range(classes)]
        q = softmax_by_hand([v / tau for v in u])
        p = softmax_by_hand(row)
        total += sum(qk * (math.log(qk) - math.log(pk)) for qk, pk in zip(q, p, strict=True))
        count += classes
    return total / count


def test_tfkd_needs_no_teacher_and_has_the_authors_resnet18_defaults():
    cls = lookup(METHODS, "method", "tfkd")
    assert cls.needs_teacher is False
    hp = cls.resolve_hp()
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature", "correct_prob")} == {
        "ce_weight": 0.9,  # 1 - reg_alpha
        "kd_weight": 0.0,
        "method_weight": 10.0,  # reg_alpha * multiplier = 0.1 * 100
        "temperature": 20.0,
        "correct_prob": 0.99,
    }


@pytest.mark.parametrize(("correct_prob", "tau"), [(0.99, 20.0), (0.9, 1.0), (0.99, 40.0)])
def test_tfkd_term_is_the_authors_kl_to_the_softened_virtual_teacher(correct_prob, tau):
    method = build(correct_prob=correct_prob, temperature=tau)
    terms = method.losses(Features(logits=STUDENT_LOGITS, pooled=None), None, LABELS, LABELS)
    assert terms.keys() == {"ce", "tfkd"}
    expected = tfkd_kl_by_hand(STUDENT_LOGITS, LABELS, correct_prob, tau)
    assert terms["tfkd"].item() == pytest.approx(10.0 * expected, rel=1e-5)


def test_tfkd_total_is_the_authors_alpha_mix_with_the_multiplier():
    # (1 - alpha) CE + alpha * m * KL with the MobileNetV2 run's alpha 0.95, tau 40, m 1
    method = build(ce_weight=0.05, method_weight=0.95, temperature=40.0)
    terms = method.losses(Features(logits=STUDENT_LOGITS, pooled=None), None, LABELS, LABELS)
    ce = (
        sum(
            -math.log(softmax_by_hand(row)[label])
            for row, label in zip(STUDENT_LOGITS.tolist(), LABELS.tolist(), strict=True)
        )
        / 3
    )
    expected = 0.05 * ce + 0.95 * tfkd_kl_by_hand(STUDENT_LOGITS, LABELS, 0.99, 40.0)
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("key", "value"), [("correct_prob", 1.0), ("correct_prob", 0.0), ("temperature", 0.0)]
)
def test_tfkd_refuses_a_virtual_teacher_it_cannot_build(key, value):
    with pytest.raises(ConfigError, match=f"tfkd.{key}"):
        build(**{key: value})


def build_self(**overrides) -> Method:
    labels = torch.arange(8) % 4
    context = MethodContext(SHAPES, SHAPES, 4, len(labels), labels)
    method_class = lookup(METHODS, "method", "tfkd_self")
    return method_class(method_class.resolve_hp(overrides), context)


def test_tfkd_self_has_the_authors_resnet18_self_training_defaults():
    cls = lookup(METHODS, "method", "tfkd_self")
    assert cls.needs_teacher is True
    hp = cls.resolve_hp()
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 0.05,  # 1 - alpha
        "kd_weight": 0.0,
        "method_weight": 47.5,  # alpha * multiplier = 0.95 * 50
        "temperature": 6.0,
    }


def test_tfkd_self_term_is_the_authors_tempered_kl_element_mean_times_t_squared():
    method = build_self(temperature=3.0, method_weight=1.0)
    terms = method.losses(
        Features(logits=STUDENT_LOGITS, pooled=None),
        Features(logits=TEACHER_LOGITS, pooled=None),
        LABELS,
        LABELS,
    )
    assert terms.keys() == {"ce", "tfkd_self"}
    total, count = 0.0, 0
    for s_row, t_row in zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), strict=True):
        p_s, p_t = softmax_by_hand([v / 3 for v in s_row]), softmax_by_hand([v / 3 for v in t_row])
        total += sum(q * math.log(q / p) for q, p in zip(p_t, p_s, strict=True))
        count += len(s_row)
    assert terms["tfkd_self"].item() == pytest.approx(9 * total / count, rel=1e-5)


def test_tfkd_self_refuses_a_teacher_unlike_the_student():
    cls = lookup(METHODS, "method", "tfkd_self")
    cls.check_pair(SHAPES, SHAPES)
    wider = FeatureShapes(stem=None, stages=((4, 2, 2),), preact=((4, 2, 2),), pooled=(5,), logits=(4,))
    with pytest.raises(
        PairNotSupportedError,
        match=r"tfkd_self is self-training.*stages \(\(4, 2, 2\),\) \(student \(\(2, 2, 2\),\)\)",
    ):
        cls.check_pair(SHAPES, wider)
    with pytest.raises(PairNotSupportedError, match="tfkd_self compares class distributions"):
        cls.check_pair(SHAPES, None)
