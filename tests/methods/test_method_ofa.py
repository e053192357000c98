"""OFA-KD (Hao et al., NeurIPS 2023, methods/ofa.py) and BKD (the same authors' code, methods/bkd.py).

The losses are checked against the formulas written out here in plain Python on hand-made logits;
the branches against the authors' design (distillers/ofa.py at Hao840/OFAKD@f7bb896)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import TRIO_STUDENT_LOGITS as STUDENT_LOGITS
from method_fixtures import TRIO_TEACHER_LOGITS as TEACHER_LOGITS
from method_fixtures import feature_shapes, softmax
from torch import nn

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.errors import ConfigError
from kdbench.core.features import Features, FeatureShapes
from kdbench.methods.base import MethodContext, PairNotSupportedError, method_class
from kdbench.methods.ofa import SepConv, TokenBranch, branch_stages, ofa_loss

CLASSES = 4
# a CNN student of 4 stages (8x8 down to 1x1), a teacher whose pooled width is larger
STUDENT = feature_shapes([(4, 8, 8), (8, 4, 4), (16, 2, 2), (32, 1, 1)], pooled=(32,), logits=(CLASSES,))
TEACHER = feature_shapes([(6, 8, 8), (12, 4, 4)], pooled=(48,), logits=(CLASSES,))


def ofa_by_hand(student_rows, teacher_rows, labels, eps, temperature):
    """Eq. 5 of the paper, the mean over rows of -sum_k [(p^t_k + 1_y,k)^eps - 1_y,k] log p^s_k."""
    total = 0.0
    for s_row, t_row, label in zip(student_rows, teacher_rows, labels, strict=True):
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        for k, (ps, pt) in enumerate(zip(p_s, p_t, strict=True)):
            target = 1.0 if k == label else 0.0
            total -= ((pt + target) ** eps - target) * math.log(ps)
    return total / len(labels)


def build(student=STUDENT, teacher=TEACHER, student_model=None, **overrides):
    cls = method_class("ofa")
    labels = torch.arange(8) % CLASSES
    context = MethodContext(student, teacher, CLASSES, len(labels), labels, student=student_model)
    return cls(cls.resolve_hp(overrides), context)


def test_ofa_has_the_authors_defaults():
    hp = method_class("ofa").resolve_hp()
    assert {
        k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature", "eps", "logit_weight")
    } == {
        "ce_weight": 1.0,  # --gt-loss-weight 1
        "kd_weight": 0.0,  # the logit term is OFA's own, not the shared KL
        "method_weight": 1.0,  # --ofa-loss-weight 1
        "temperature": 1.0,  # --ofa-temperature 1
        "eps": 1.0,  # README's CIFAR-100 command, --ofa-eps 1.0
        "logit_weight": 1.0,  # --kd-loss-weight 1
    }


@pytest.mark.parametrize(("eps", "temperature"), [(1.0, 1.0), (1.5, 1.0), (1.2, 2.0), (0.5, 3.0)])
def test_ofa_loss_is_the_papers_eq5(eps, temperature):
    loss = ofa_loss(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, eps, temperature)
    expected = ofa_by_hand(
        STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), LABELS.tolist(), eps, temperature
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ofa_at_eps_1_is_cross_entropy_with_teacher_plus_label():
    # (p^t + 1_y)^1 - 1_y = p^t: the teacher's soft cross-entropy, the label term dropping out
    soft_ce = -(TEACHER_LOGITS.softmax(1) * STUDENT_LOGITS.log_softmax(1)).sum(1).mean()
    assert ofa_loss(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, 1.0, 1.0).item() == pytest.approx(soft_ce.item())


def test_ofa_eps_above_1_weights_the_target_class_up():
    # the target class's weight is (1 + p^t_y)^eps - 1, every other class's (p^t_k)^eps: at eps 1.5 and a
    # uniform teacher, 0.540 against 0.192
    labels = torch.tensor([0])
    student, teacher = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    p_t = 1 / 3
    target_weight = (1 + p_t) ** 1.5 - 1
    other_weight = p_t**1.5
    log_p = student.log_softmax(1)[0]
    expected = -(target_weight * log_p[0] + other_weight * (log_p[1] + log_p[2])).item()
    assert ofa_loss(student, teacher, labels, 1.5, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_ofa_terms_are_its_branches_and_the_logits_each_against_the_teacher():
    torch.manual_seed(0)
    method = build(eps=1.3, temperature=2.0, logit_weight=0.5, method_weight=2.0)
    batch = 3
    stages = [torch.randn(batch, *shape) for shape in STUDENT.stages]
    student = Features(logits=STUDENT_LOGITS, pooled=None, stages=stages)
    teacher = Features(logits=TEACHER_LOGITS, pooled=None)
    terms = method.losses(student, teacher, LABELS, LABELS)
    assert terms.keys() == {"ce", "ofa_logits", "ofa_stages"}
    s_rows, t_rows, labels = STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), LABELS.tolist()
    assert terms["ofa_logits"].item() == pytest.approx(
        2.0 * 0.5 * ofa_by_hand(s_rows, t_rows, labels, 1.3, 2.0), rel=1e-5
    )
    with torch.no_grad():
        branch_logits = [
            branch(stages[i]) for i, branch in zip(method.stage_indices, method.branches, strict=True)
        ]
    expected = sum(ofa_by_hand(z.tolist(), t_rows, labels, 1.3, 2.0) for z in branch_logits)
    assert terms["ofa_stages"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_ofa_cnn_branches_follow_the_authors_design():
    method = build()
    assert method.stage_indices == [0, 1, 2, 3]
    width = max(STUDENT.pooled[0], TEACHER.pooled[0])  # max(feature_dim_s, feature_dim_t)
    for position, branch in enumerate(method.branches):
        sepconvs = [m for m in branch if isinstance(m, SepConv)]
        assert len(sepconvs) == 3 - position  # 4 - stage down-sampling blocks
        assert branch[-1].in_features == width and branch[-1].out_features == CLASSES
    assert isinstance(method.branches[-1][0], nn.Conv2d) and method.branches[-1][0].kernel_size == (1, 1)
    for shape, branch in zip(STUDENT.stages, method.branches, strict=True):
        assert branch(torch.randn(2, *shape)).shape == (2, CLASSES)


def test_ofa_taps_a_12_block_model_where_the_authors_do():
    assert branch_stages(12) == [1, 3, 9, 11]  # their stage_info for ViT-S / Mixer-B: blocks 2, 4, 10, 12
    assert branch_stages(3) == [0, 1, 2]
    assert branch_stages(6) == [0, 1, 4, 5]


def test_ofa_token_branches_merge_patches_to_a_7_grid_then_vit_blocks():
    branch = TokenBranch((16, 28, 28), blocks=3, width=32, num_classes=CLASSES)
    merges = [m for m in branch.merge if type(m).__name__ == "PatchMerging"]
    assert len(merges) == 2  # 28 -> 14 -> 7, log2(28 / 7)
    assert len(branch.blocks) == 3
    assert branch(torch.randn(2, 16, 28, 28)).shape == (2, CLASSES)
    small = TokenBranch(
        (16, 2, 2), blocks=1, width=32, num_classes=CLASSES
    )  # no merge: a linear to the width
    assert isinstance(small.project, nn.Linear) and small(torch.randn(2, 16, 2, 2)).shape == (2, CLASSES)


def test_ofa_builds_token_branches_for_a_token_student():
    from kdbench.models import build_model

    student = build_model("timm:test_vit", num_classes=CLASSES, image_size=(32, 32))
    features = student(torch.randn(2, 3, 32, 32), features=True)
    method = build(FeatureShapes.of(features), TEACHER, student_model=student)
    assert all(isinstance(branch, TokenBranch) for branch in method.branches)
    assert method.stage_indices == [0, 1, 4, 5]  # test_vit has 6 blocks
    teacher = Features(logits=torch.randn(2, CLASSES), pooled=None)
    terms = method.method_terms(features, teacher, torch.tensor([0, 1]), torch.arange(2))
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in method.parameters())


def test_ofa_refuses_other_classes_and_a_student_without_stage_maps():
    with pytest.raises(PairNotSupportedError, match="ofa compares class distributions"):
        method_class("ofa").check_pair(
            STUDENT, feature_shapes([(6, 8, 8)], pooled=(48,), logits=(CLASSES + 1,))
        )
    flat = feature_shapes([], pooled=(32,), logits=(CLASSES,))
    with pytest.raises(PairNotSupportedError, match="stage outputs"):
        method_class("ofa").check_pair(flat, TEACHER)


@pytest.mark.parametrize("key", ["eps", "temperature"])
def test_ofa_refuses_a_non_positive_eps_or_temperature(key):
    with pytest.raises(ConfigError, match=f"ofa.{key}"):
        build(**{key: 0.0})


def test_bkd_is_the_authors_bce_with_the_teachers_softmax():
    cls = method_class("bkd")
    hp = cls.resolve_hp()
    assert (hp["ce_weight"], hp["kd_weight"], hp["method_weight"]) == (1.0, 0.0, 1.0)
    labels = torch.arange(8) % CLASSES
    method = cls(hp, MethodContext(STUDENT, TEACHER, CLASSES, len(labels), labels))
    terms = method.losses(
        Features(logits=STUDENT_LOGITS, pooled=None),
        Features(logits=TEACHER_LOGITS, pooled=None),
        LABELS,
        LABELS,
    )
    assert terms.keys() == {"ce", "bkd"}
    total, count = 0.0, 0
    for s_row, t_row in zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), strict=True):
        for z, q in zip(s_row, softmax(t_row), strict=True):
            sigma = 1 / (1 + math.exp(-z))
            total -= q * math.log(sigma) + (1 - q) * math.log(1 - sigma)
            count += 1
    assert terms["bkd"].item() == pytest.approx(total / count, rel=1e-5)
