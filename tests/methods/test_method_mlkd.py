"""MLKD (Jin et al., CVPR 2023, methods/mlkd.py): instance, batch and class alignment over two views.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from method_fixtures import ROWS_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import ROWS_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import build, kl_times_t2, logits_context, mean, softmax
from method_fixtures import row_features as logits_features

NUM_CLASSES = 3


STRONG_STUDENT = [[0.5, 0.1, -0.2], [0.0, 0.4, 0.3], [-1.0, 0.2, 0.9], [1.2, -0.4, 0.1]]
STRONG_TEACHER = [[1.5, -0.2, 0.0], [-0.3, 1.1, 0.2], [0.2, -0.5, 1.4], [0.8, 0.6, -1.1]]
LABELS = [0, 1, 2, 0]


def test_mlkd_is_instance_batch_and_class_alignment_at_five_temperatures_over_two_views():
    method = build("mlkd", logits_context())
    weak_s, weak_t = logits_features(STUDENT_LOGITS), logits_features(TEACHER_LOGITS)
    views = {"strong": (logits_features(STRONG_STUDENT), logits_features(STRONG_TEACHER))}
    terms = method.losses(weak_s, weak_t, torch.tensor(LABELS), None, views=views)

    teacher_probs = [softmax(row) for row in TEACHER_LOGITS]
    confidences = [max(p) for p in teacher_probs]
    samples = mean([c <= statistics.median(confidences) for c in confidences])
    class_sums = [sum(p[k] for p in teacher_probs) for k in range(NUM_CLASSES)]
    classes = mean([c <= statistics.median(class_sums) for c in class_sums])

    def batch_level(student, teacher, temperature):
        p_s = [softmax(r, temperature) for r in student]
        p_t = [softmax(r, temperature) for r in teacher]
        return (
            sum(
                (
                    sum(a * b for a, b in zip(p_t[i], p_t[j], strict=True))
                    - sum(a * b for a, b in zip(p_s[i], p_s[j], strict=True))
                )
                ** 2
                for i in range(4)
                for j in range(4)
            )
            / 4
        )

    def class_level(student, teacher, temperature):
        p_s = [softmax(r, temperature) for r in student]
        p_t = [softmax(r, temperature) for r in teacher]
        return (
            sum(
                (sum(p_t[n][k] * p_t[n][m] for n in range(4)) - sum(p_s[n][k] * p_s[n][m] for n in range(4)))
                ** 2
                for k in range(NUM_CLASSES)
                for m in range(NUM_CLASSES)
            )
            / NUM_CLASSES
        )

    def instance(student, teacher, temperature):
        return mean([kl_times_t2(s, t, temperature) for s, t in zip(student, teacher, strict=True)])

    temperatures = (2.0, 3.0, 4.0, 5.0, 6.0)
    expected_instance = sum(
        samples * instance(STUDENT_LOGITS, TEACHER_LOGITS, t) + instance(STRONG_STUDENT, STRONG_TEACHER, t)
        for t in temperatures
    )
    expected_batch = sum(samples * batch_level(STUDENT_LOGITS, TEACHER_LOGITS, t) for t in temperatures)
    expected_class = sum(classes * class_level(STUDENT_LOGITS, TEACHER_LOGITS, t) for t in temperatures)
    assert terms["mlkd_instance"].item() == pytest.approx(0.9 * expected_instance, rel=1e-5)
    assert terms["mlkd_batch"].item() == pytest.approx(0.9 * expected_batch, rel=1e-5)
    assert terms["mlkd_class"].item() == pytest.approx(0.9 * expected_class, rel=1e-5)

    def cross_entropy(rows):
        return mean([-math.log(softmax(row)[y]) for row, y in zip(rows, LABELS, strict=True)])

    assert terms["ce"].item() == pytest.approx(0.1 * cross_entropy(STUDENT_LOGITS), rel=1e-5)
    assert terms["ce_strong"].item() == pytest.approx(0.1 * cross_entropy(STRONG_STUDENT), rel=1e-5)
    assert set(terms) == {"ce", "ce_strong", "mlkd_instance", "mlkd_batch", "mlkd_class"}
