"""AB, FT, FSP and ReviewKD: each loss against its paper's formula on hand-made tensors, the init
stages they declare, FSP's pair refusal, and finite gradients through `losses`."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.core.registries import METHODS
from kdbench.methods.ab import AB, activation_boundary_loss
from kdbench.methods.base import Features, FeatureShapes, MethodContext, PairNotSupportedError
from kdbench.methods.fsp import FSP, fsp_matrix
from kdbench.methods.ft import FT, factor_transfer_loss
from kdbench.methods.reviewkd import ReviewKD, hierarchical_context_loss

BATCH = 2
NUM_CLASSES = 5


def shapes(stem: int, channels: list[int], sizes: list[int]) -> FeatureShapes:
    stages = tuple((c, s, s) for c, s in zip(channels, sizes, strict=True))
    return FeatureShapes(
        stem=(stem, sizes[0], sizes[0]),
        stages=stages,
        preact=stages,
        pooled=(channels[-1],),
        logits=(NUM_CLASSES,),
    )


STUDENT = shapes(4, [4, 8], [8, 4])
TEACHER = shapes(4, [4, 16], [8, 4])  # same stage count, wider last stage


def context(student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER) -> MethodContext:
    return MethodContext(
        student, teacher, NUM_CLASSES, num_train=10, train_labels=torch.zeros(10, dtype=torch.long)
    )


def random_features(feature_shapes: FeatureShapes, requires_grad: bool) -> Features:
    def tensor(shape):
        return torch.randn(BATCH, *shape, requires_grad=requires_grad)

    return Features(
        logits=tensor(feature_shapes.logits),
        pooled=tensor(feature_shapes.pooled),
        stem=tensor(feature_shapes.stem),
        stages=[tensor(s) for s in feature_shapes.stages],
        preact=[tensor(s) for s in feature_shapes.preact],
    )


def build(cls, **overrides):
    return cls(cls.resolve_hp(overrides), context())


# ---- losses against the papers' formulas ----------------------------------------------------------


def test_ab_margin_loss_on_hand_picked_values():
    source = torch.tensor([-2.0, -0.5, 0.5, 2.0, -0.5, 0.5])
    target = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 0.0])
    # teacher active (t > 0): relu(1 - s)^2 -> 9, 2.25, 0.25, 0; inactive: relu(1 + s)^2 -> 0.25, 2.25
    expected = 9 + 2.25 + 0.25 + 0 + 0.25 + 2.25
    assert activation_boundary_loss(source, target, margin=1.0).item() == pytest.approx(expected)


def test_ab_stage_weights_batch_and_scale():
    method = build(AB)
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    # stage 0 has equal shapes: identity connector; stage 1 goes through its conv + BN connector
    per_stage = [
        activation_boundary_loss(student.preact[0], teacher.preact[0], 1.0),
        activation_boundary_loss(method.connectors[1](student.preact[1]), teacher.preact[1], 1.0),
    ]
    expected = (0.5 * per_stage[0] + 1.0 * per_stage[1]) / BATCH * 3 / 1000
    assert method.ab_loss(student, teacher)["ab"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ft_normalised_factor_and_l1():
    # one sample, 2 channels, 1x2 map; factor map = mean_c(F^2) per position, then L2-normalised
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # mean_c F^2 = [1, 2]
    teacher = torch.tensor([[[[3.0, 0.0]], [[0.0, 0.0]]]])  # mean_c F^2 = [4.5, 0]
    student_unit = [1 / math.sqrt(5), 2 / math.sqrt(5)]
    teacher_unit = [1.0, 0.0]
    expected = (abs(student_unit[0] - teacher_unit[0]) + abs(student_unit[1] - teacher_unit[1])) / 2
    assert factor_transfer_loss(student, teacher).item() == pytest.approx(expected)


def test_ft_pools_the_larger_factor():
    student = torch.ones(1, 3, 4, 4)
    teacher = torch.ones(1, 2, 2, 2)
    assert factor_transfer_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_fsp_matrix_of_hand_made_features():
    lower = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    upper = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]], [[1.0, -1.0], [1.0, -1.0]]]])
    expected = torch.empty(2, 3)
    for i in range(2):
        for j in range(3):
            expected[i, j] = (
                sum(lower[0, i, h, w] * upper[0, j, h, w] for h in range(2) for w in range(2)) / 4
            )
    # row 0: (1+2+3+4)/4, (2+8)/4, (1-2+3-4)/4; row 1: 2/4, 2/4, -2/4
    assert torch.allclose(expected, torch.tensor([[2.5, 2.5, -0.5], [0.5, 0.5, -0.5]]))
    assert torch.allclose(fsp_matrix(lower, upper)[0], expected)


def test_fsp_matrix_pools_the_larger_map():
    lower = torch.arange(16.0).reshape(1, 1, 4, 4)
    upper = torch.ones(1, 1, 2, 2)
    assert fsp_matrix(lower, upper).item() == pytest.approx(lower.mean().item())


def test_reviewkd_hcl_on_known_pyramids():
    checkerboard = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2 * 2.0 - 1  # +-1
    teacher = [checkerboard.view(1, 1, 4, 4), torch.full((1, 1, 1, 1), 3.0)]
    student = [torch.zeros(1, 1, 4, 4), torch.full((1, 1, 1, 1), 1.0)]
    # 4x4 level: full MSE 1; 2x2 and 1x1 poolings of a checkerboard are 0, weights 1/2, 1/4 (4x4 skipped)
    # 1x1 level: only the full MSE, (3 - 1)^2
    expected = (1.0 + 0.5 * 0 + 0.25 * 0) / (1 + 0.5 + 0.25) + 4.0
    assert hierarchical_context_loss(student, teacher).item() == pytest.approx(expected)


def test_reviewkd_projects_to_the_teacher_pyramid_and_warms_up():
    method = build(ReviewKD)
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    assert [p.shape[1:] for p in method.review(student)] == [(16, 1, 1), (16, 4, 4), (4, 8, 8)]
    method.set_epoch(1, 240)
    assert method.method_terms(student, teacher, None, None)["reviewkd"].item() == 0.0
    method.set_epoch(11, 240)
    half = method.method_terms(student, teacher, None, None)["reviewkd"]
    method.set_epoch(21, 240)
    full = method.method_terms(student, teacher, None, None)["reviewkd"]
    assert half.item() == pytest.approx(full.item() / 2, rel=1e-5)


# ---- init stages ------------------------------------------------------------------------------------


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


def test_ft_init_loss_reconstructs_the_teacher_only():
    method = build(FT)
    student, teacher = random_features(STUDENT, True), random_features(TEACHER, False)
    loss = sum(method.init_stage().loss(student, teacher).values())
    loss.backward()
    assert all(s.grad is None for s in student.stages)
    assert all(p.grad is not None for p in method.paraphraser.parameters())


def test_ab_and_fsp_main_stage_is_plain_ce_by_default():
    student, teacher = random_features(STUDENT, False), random_features(TEACHER, False)
    labels = torch.tensor([0, 1])
    assert set(build(AB).losses(student, teacher, labels, None)) == {"ce"}
    fsp_context = context(STUDENT, STUDENT)
    assert set(FSP(FSP.resolve_hp(), fsp_context).losses(student, student, labels, None)) == {"ce"}


def test_methods_are_registered():
    for name, cls in {"ab": AB, "ft": FT, "fsp": FSP, "reviewkd": ReviewKD}.items():
        assert METHODS.get(name) is cls and cls.name == name


# ---- pair checks ------------------------------------------------------------------------------------


def test_fsp_refuses_different_stage_counts():
    with pytest.raises(PairNotSupportedError, match=r"^fsp: student has 2 stages, teacher has 3") as error:
        FSP.check_pair(STUDENT, shapes(4, [4, 8, 16], [8, 4, 2]))
    assert "\n" not in str(error.value)


def test_fsp_refuses_different_channels():
    with pytest.raises(PairNotSupportedError, match=r"^fsp: FSP layer channels differ") as error:
        FSP.check_pair(STUDENT, TEACHER)
    assert (
        "[4, 4, 8]" in str(error.value) and "[4, 4, 16]" in str(error.value) and "\n" not in str(error.value)
    )


def test_pairs_served():
    FSP.check_pair(STUDENT, STUDENT)
    AB.check_pair(STUDENT, TEACHER)
    ReviewKD.check_pair(STUDENT, TEACHER)
    with pytest.raises(PairNotSupportedError, match="^ab: "):
        AB.check_pair(STUDENT, shapes(4, [4, 8], [8, 1]))
    with pytest.raises(PairNotSupportedError, match="^reviewkd: "):
        ReviewKD.check_pair(STUDENT, shapes(4, [4, 8, 16], [8, 4, 2]))


# ---- gradients --------------------------------------------------------------------------------------


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
