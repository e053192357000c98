"""ITRD (Miles et al., BMVC 2022, methods/itrd.py): the correlation and mutual-information terms on
the pooled features through the shared embedding.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError

NUM_CLASSES = 3


def shapes(width: int) -> FeatureShapes:
    return FeatureShapes(None, (), (), (width,), (NUM_CLASSES,))


def build(student_width=2, teacher_width=3, **overrides):
    cls = METHODS.get("itrd")
    context = MethodContext(
        shapes(student_width), shapes(teacher_width), NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long)
    )
    return cls(cls.resolve_hp(overrides), context)


POOLED_S = [[0.5, -1.0], [1.5, 0.2], [-0.3, 0.9], [0.0, 0.4]]
POOLED_T = [[1.0, 0.0, 2.0], [0.3, -0.7, 1.1], [2.2, 0.5, -0.4], [0.8, 1.3, 0.6]]


def standardised_columns(rows):
    """Each column minus its mean, over its unbiased standard deviation."""
    out = []
    for column in zip(*rows, strict=True):
        mean = sum(column) / len(column)
        std = math.sqrt(sum((v - mean) ** 2 for v in column) / (len(column) - 1))
        out.append([(v - mean) / std for v in column])
    return out  # columns


def correlation_by_hand(student_rows, teacher_rows, alpha):
    s_cols, t_cols = standardised_columns(student_rows), standardised_columns(teacher_rows)
    batch = len(student_rows)
    total = 0.0
    for s, t in zip(s_cols, t_cols, strict=True):
        c = sum(a * b for a, b in zip(s, t, strict=True)) / batch
        total += ((c - 1) ** 2) ** alpha
    return math.log2(total)


def mutual_by_hand(student_rows, teacher_rows):
    def normalised(rows):
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    def gram(rows):
        return [[sum(a * b for a, b in zip(r, q, strict=True)) for q in rows] for r in rows]

    g_s, g_t = gram(normalised(student_rows)), gram(normalised(teacher_rows))
    n = len(g_s)
    g_st = [[g_s[i][j] * g_t[i][j] for j in range(n)] for i in range(n)]
    tr_s, tr_st = sum(g_s[i][i] for i in range(n)), sum(g_st[i][i] for i in range(n))
    return sum((g_s[i][j] / tr_s) ** 2 - (g_st[i][j] / tr_st) ** 2 for i in range(n) for j in range(n))


def embedded_by_hand(method, rows):
    weight, bias = method.embed.weight.tolist(), method.embed.bias.tolist()
    return [
        [sum(w * x for w, x in zip(weight[d], row, strict=True)) + bias[d] for d in range(len(bias))]
        for row in rows
    ]


def test_itrd_terms_are_renyi_correlation_and_mutual_information_through_the_embedding():
    method = build()
    terms = method.losses(
        Features(logits=torch.zeros(4, NUM_CLASSES), pooled=torch.tensor(POOLED_S)),
        Features(logits=torch.zeros(4, NUM_CLASSES), pooled=torch.tensor(POOLED_T)),
        torch.tensor([0, 1, 2, 1]),
        None,
    )
    embedded = embedded_by_hand(method, POOLED_S)
    assert terms["itrd_correlation"].item() == pytest.approx(
        2.0 * correlation_by_hand(embedded, POOLED_T, 1.01), rel=1e-5
    )
    assert terms["itrd_mutual"].item() == pytest.approx(
        1.0 * mutual_by_hand(embedded, POOLED_T), rel=1e-4, abs=1e-6
    )
    assert set(terms) == {"ce", "itrd_correlation", "itrd_mutual"}


def test_itrd_mutual_term_reads_the_raw_student_when_the_widths_match():
    method = build(student_width=3, teacher_width=3, alpha=1.5, lambda_mutual=0.05)
    student_rows = [[0.1, 0.9, -0.4], [1.0, 0.2, 0.3], [-0.6, 0.5, 0.8], [0.4, -0.2, 1.1]]
    terms = method.method_terms(
        Features(logits=None, pooled=torch.tensor(student_rows)),
        Features(logits=None, pooled=torch.tensor(POOLED_T)),
        torch.tensor([0, 1, 2, 1]),
        None,
    )
    assert terms["itrd_mutual"].item() == pytest.approx(
        0.05 * mutual_by_hand(student_rows, POOLED_T), rel=1e-4, abs=1e-7
    )
    embedded = embedded_by_hand(method, student_rows)
    assert terms["itrd_correlation"].item() == pytest.approx(
        2.0 * correlation_by_hand(embedded, POOLED_T, 1.5), rel=1e-5
    )


def test_itrd_terms_are_zero_on_a_batch_of_one_and_it_refuses_no_teacher():
    method = build()
    terms = method.method_terms(
        Features(logits=None, pooled=torch.ones(1, 2)),
        Features(logits=None, pooled=torch.ones(1, 3)),
        torch.tensor([0]),
        None,
    )
    assert all(value.item() == 0.0 for value in terms.values())
    with pytest.raises(PairNotSupportedError, match="teacher"):
        METHODS.get("itrd").check_pair(shapes(2), None)
    METHODS.get("itrd").check_pair(shapes(2), FeatureShapes(None, (), (), (7,), (NUM_CLASSES + 2,)))


def test_itrd_is_finite_when_a_teacher_dimension_is_constant_over_the_batch():
    """A dead teacher channel: the code's division by its zero std is NaN; the floor makes the
    dimension add (|0 - 1|^2)^alpha = 1 inside the log."""
    method = build()
    dead = [[row[0], 0.0, row[2]] for row in POOLED_T]
    terms = method.method_terms(
        Features(logits=None, pooled=torch.tensor(POOLED_S)),
        Features(logits=None, pooled=torch.tensor(dead)),
        torch.tensor([0, 1, 2, 1]),
        None,
    )
    embedded = embedded_by_hand(method, POOLED_S)
    live = [[row[0], row[2]] for row in dead]
    s_cols, t_cols = standardised_columns([[r[0], r[2]] for r in embedded]), standardised_columns(live)
    residuals = sum(
        ((sum(a * b for a, b in zip(s, t, strict=True)) / 4 - 1) ** 2) ** 1.01
        for s, t in zip(s_cols, t_cols, strict=True)
    )
    assert terms["itrd_correlation"].item() == pytest.approx(2.0 * math.log2(residuals + 1.0), rel=1e-5)
    assert torch.isfinite(terms["itrd_mutual"])
