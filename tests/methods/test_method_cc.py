"""CC (Peng et al., ICCV 2019, methods/cc.py): the correlation congruence as RepDistiller computes it.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import (
    STUDENT,
    TEACHER,
    build_between,
    dot,
    random_features,
    rows,
)


def test_cc_matches_repdistiller_correlation_of_neighbouring_mismatches():
    from kdbench.methods.cc import correlation_congruence_loss

    e_s = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    e_t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(rows(e_s), rows(e_t), strict=True)]
    # d = [[1, 1], [1, 2], [2, 1]] -> (<d0, d1> + <d1, d2>) / 2 = (3 + 4) / 2
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert expected == 3.5
    assert correlation_congruence_loss(e_s, e_t).item() == pytest.approx(expected)


def test_cc_embeds_both_pooled_features_into_the_shared_space():
    cc = build_between("cc", embed_dim=6)
    assert cc.student_embed.in_features == STUDENT.pooled[0]
    assert cc.teacher_embed.in_features == TEACHER.pooled[0]
    student, teacher = random_features(STUDENT, False, batch=3), random_features(TEACHER, False, batch=3)
    e_s, e_t = rows(cc.student_embed(student.pooled)), rows(cc.teacher_embed(teacher.pooled))
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(e_s, e_t, strict=True)]
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert cc.method_terms(student, teacher, None, None)["cc"].item() == pytest.approx(expected, rel=1e-5)
