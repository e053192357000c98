"""CTKD (Li et al., AAAI 2023, methods/ctkd.py): the cosine curriculum and the reversed temperature gradient.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
from method_fixtures import ROWS_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import ROWS_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import build, kl_times_t2, logits_context, mean
from method_fixtures import row_features as logits_features

from kdbench.methods.ctkd import curriculum_lambda

NUM_CLASSES = 3


def test_ctkd_curriculum_rises_from_lambda_min_to_lambda_max_as_a_cosine():
    assert curriculum_lambda(0, 10, 0.0, 1.0) == 0.0
    assert curriculum_lambda(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert curriculum_lambda(1, 10, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert curriculum_lambda(10, 10, 0.0, 1.0) == curriculum_lambda(50, 10, 0.0, 1.0) == 1.0
    method = build("ctkd", logits_context())
    method.set_epoch(1, 24)  # 10 of 240 epochs -> 1 of 24: done after the first epoch
    assert method.lambda_ == 1.0
    method.set_epoch(1, 240)
    assert method.lambda_ == pytest.approx((1 - math.cos(math.pi / 10)) / 2)


def test_ctkd_is_kd_at_the_learned_temperature_whose_gradient_is_reversed():
    method = build("ctkd", logits_context(), init_theta=-2.0)  # tau = 1 + 20 sigmoid(-2) = 3.38
    method.set_epoch(5, 240)  # lambda = 1/2
    student = logits_features(STUDENT_LOGITS, requires_grad=True)
    term = method.method_terms(student, logits_features(TEACHER_LOGITS), None, None)["ctkd"]

    def loss_at(theta):
        temperature = 1.0 + 20.0 / (1.0 + math.exp(-theta))
        return mean(
            [kl_times_t2(s, t, temperature) for s, t in zip(STUDENT_LOGITS, TEACHER_LOGITS, strict=True)]
        )

    assert term.item() == pytest.approx(loss_at(-2.0), rel=1e-5)
    term.backward()
    derivative = (loss_at(-2.0 + 1e-5) - loss_at(-2.0 - 1e-5)) / 2e-5
    assert method.theta.grad.item() == pytest.approx(-0.5 * derivative, rel=1e-3)  # -lambda * dL/dtheta
    assert student.logits.grad is not None  # the student descends the same loss
