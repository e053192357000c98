"""The init stages AB, FT and FSP declare (what RepDistiller trains before the main stage), the pairs
the init-stage methods serve, and finite gradients through `losses` and the init loss."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import INIT_STUDENT as STUDENT
from method_fixtures import INIT_TEACHER as TEACHER
from method_fixtures import build_init_stage as build
from method_fixtures import context, random_features, shapes

from kdbench.methods.ab import AB
from kdbench.methods.base import PairNotSupportedError
from kdbench.methods.fsp import FSP
from kdbench.methods.ft import FT
from kdbench.methods.reviewkd import ReviewKD


def test_init_stages_declare_what_repdistiller_trains():
    ab, ft, fsp, review = build(AB), build(FT), build(FSP), build(ReviewKD)

    stage = ab.init_stage()
    assert stage.epochs == 30 and stage.trains_student
    assert {id(p) for p in stage.parameters} == {id(p) for p in ab.connectors.parameters()}
    assert len(stage.parameters) == 3  # one conv + BN connector (stage 1); stage 0 is identity

    stage = ft.init_stage()
    assert stage.epochs == 30 and not stage.trains_student
    assert {id(p) for p in stage.parameters} == {id(p) for p in ft.paraphraser.parameters()}

    stage = fsp.init_stage()
    assert stage.epochs == 30 and stage.trains_student and stage.parameters == []

    assert review.init_stage() is None
    assert build(AB, init_epochs=4).init_stage().epochs == 4


def test_ab_and_fsp_main_stage_is_plain_ce_by_default():
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    labels = torch.tensor([0, 1])
    assert set(build(AB).losses(student, teacher, labels, None)) == {"ce"}
    fsp_context = context(STUDENT, STUDENT)
    assert set(FSP(FSP.resolve_hp(), fsp_context).losses(student, student, labels, None)) == {"ce"}


def test_pairs_served():
    FSP.check_pair(STUDENT, STUDENT)
    AB.check_pair(STUDENT, TEACHER)
    ReviewKD.check_pair(STUDENT, TEACHER)
    with pytest.raises(PairNotSupportedError, match="^ab: "):
        AB.check_pair(STUDENT, shapes([4, 8], [8, 1]))
    with pytest.raises(PairNotSupportedError, match="^reviewkd: "):
        ReviewKD.check_pair(STUDENT, shapes([4, 8, 16], [8, 4, 2]))


@pytest.mark.parametrize("cls", [AB, FT, FSP, ReviewKD])
def test_losses_and_init_loss_give_finite_gradients(cls):
    teacher_shapes = STUDENT if cls is FSP else TEACHER
    method = cls(cls.resolve_hp({"method_weight": 1.0}), context(STUDENT, teacher_shapes))
    method.set_epoch(30, 240)
    student, teacher = random_features(STUDENT, True), random_features(teacher_shapes, False)
    terms = method.losses(student, teacher, torch.tensor([0, 3]), torch.tensor([0, 1]))
    assert set(terms) == {"ce", cls.name}
    stage = method.init_stage()
    init_loss = sum(stage.loss(student, teacher).values()) if stage else 0.0
    (sum(terms.values()) + init_loss).backward()
    gradients = [
        t.grad for t in [student.logits, *student.stages, *student.preact, student.stem, student.pooled]
    ]
    gradients += [p.grad for p in method.parameters()]
    used = [g for g in gradients if g is not None]
    assert used and all(torch.isfinite(g).all() for g in used)
    feature_gradient = student.preact if cls is AB else student.stages
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in feature_gradient[-1:])
