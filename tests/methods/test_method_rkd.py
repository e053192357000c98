"""RKD (Park et al., CVPR 2019, methods/rkd.py): distance and angle terms computed by hand.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from method_fixtures import build_between, dot, features, rows


def huber(difference: float) -> float:
    return 0.5 * difference**2 if abs(difference) < 1 else abs(difference) - 0.5


def rkd_by_hand(student: list[list[float]], teacher: list[list[float]]) -> tuple[float, float]:
    n = len(student)

    def psi_d(points):
        distances = {(i, j): math.dist(points[i], points[j]) for i in range(n) for j in range(n)}
        mu = statistics.fmean(d for (i, j), d in distances.items() if i != j)
        return {key: d / mu for key, d in distances.items()}

    def psi_a(points):
        def unit(i, j):
            diff = [a - b for a, b in zip(points[i], points[j], strict=True)]
            norm = math.hypot(*diff)
            return [x / norm for x in diff] if norm > 0 else [0.0] * len(diff)

        return {(i, j, k): dot(unit(i, j), unit(k, j)) for i in range(n) for j in range(n) for k in range(n)}

    d_s, d_t = psi_d(student), psi_d(teacher)
    a_s, a_t = psi_a(student), psi_a(teacher)
    distance = statistics.fmean(huber(d_t[key] - d_s[key]) for key in d_t)
    angle = statistics.fmean(huber(a_t[key] - a_s[key]) for key in a_t)
    return distance, angle


def test_rkd_distance_term_on_a_3_4_5_triangle():
    student = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]  # distances 3, 4, 5: mu = 4
    teacher = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # distances 1, 1, sqrt 2: mu = (2 + sqrt 2) / 3
    mu_t = (2 + math.sqrt(2)) / 3
    differences = [3 / 4 - 1 / mu_t, 4 / 4 - 1 / mu_t, 5 / 4 - math.sqrt(2) / mu_t]  # all below 1
    expected = 2 * sum(0.5 * d**2 for d in differences) / 9  # each pair twice, 9 entries
    assert rkd_by_hand(student, teacher)[0] == pytest.approx(expected)
    rkd = build_between("rkd")
    student_features, teacher_features = (
        features(pooled=torch.tensor(student)),
        features(pooled=torch.tensor(teacher)),
    )
    terms = rkd.method_terms(student_features, teacher_features, None, None)
    assert terms["rkd_distance"].item() == pytest.approx(25 * expected, rel=1e-5)


def test_rkd_distance_and_angle_terms_on_random_embeddings():
    student, teacher = torch.randn(4, 3), torch.randn(4, 5)
    distance, angle = rkd_by_hand(rows(student), rows(teacher))
    rkd = build_between("rkd")
    terms = rkd.method_terms(features(pooled=student), features(pooled=teacher), None, None)
    assert terms["rkd_distance"].item() == pytest.approx(25 * distance, rel=1e-4)
    assert terms["rkd_angle"].item() == pytest.approx(50 * angle, rel=1e-4)
