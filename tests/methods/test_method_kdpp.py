"""KD++ (Wang et al., ICCV 2023, methods/kdpp.py): the ND loss against the teacher's class means, the
class means summed over the first epoch, the KD warm-up and the embedding projector.

Each loss is checked against the authors' formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError

NUM_CLASSES = 3


def shapes_of(pooled=(2,), logits=(NUM_CLASSES,)) -> FeatureShapes:
    return FeatureShapes(stem=None, stages=((2, 2, 2),), preact=((2, 2, 2),), pooled=pooled, logits=logits)


def build(student_pooled=(2,), teacher_pooled=(2,), **overrides) -> Method:
    labels = torch.arange(6) % NUM_CLASSES
    context = MethodContext(
        shapes_of(student_pooled), shapes_of(teacher_pooled), NUM_CLASSES, len(labels), labels
    )
    method_class = lookup(METHODS, "method", "kdpp")
    return method_class(method_class.resolve_hp(overrides), context)


ZERO_LOGITS = torch.zeros(3, NUM_CLASSES)
STUDENT_EMB = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
TEACHER_EMB = torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 0, 2])


def features(pooled, logits=ZERO_LOGITS) -> Features:
    return Features(logits=logits, pooled=pooled)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def nd_by_hand(student, teacher, labels, centers):
    """DirectNormLoss.project_center / batch: 1 - <s, c / ||c||> / max(||s||, ||t||), per sample."""
    total = 0.0
    for s, t, label in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        center = centers[label]
        unit = [c / norm(center) for c in center]
        total += 1 - sum(a * b for a, b in zip(s, unit, strict=True)) / max(norm(s), norm(t))
    return total / len(labels)


def class_means_by_hand(teacher, labels):
    rows = {}
    for t, label in zip(teacher.tolist(), labels.tolist(), strict=True):
        rows.setdefault(label, []).append(t)
    return {
        label: [sum(col) / len(col) for col in zip(*vectors, strict=True)] for label, vectors in rows.items()
    }


def test_kdpp_defaults_are_the_authors_resnet56_resnet20_script():
    hp = build().hp
    keys = (
        "ce_weight",
        "kd_weight",
        "method_weight",
        "temperature",
        "kd_factor",
        "nd_factor",
        "warmup_epochs",
    )
    assert {k: hp[k] for k in keys} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "kd_factor": 1.0,
        "nd_factor": 2.0,
        "warmup_epochs": 20,
    }
    assert lookup(METHODS, "method", "kdpp").distributed_ok is False


def test_nd_loss_against_the_class_means_of_the_batches_seen_so_far():
    method = build(nd_factor=1.0)
    terms = method.method_terms(features(STUDENT_EMB), features(TEACHER_EMB), LABELS, LABELS)
    centers = class_means_by_hand(TEACHER_EMB, LABELS)  # this batch is all the first epoch has shown yet
    assert terms["kdpp_nd"].item() == pytest.approx(
        nd_by_hand(STUDENT_EMB, TEACHER_EMB, LABELS, centers), rel=1e-6
    )
    # a second batch of the first epoch joins the means
    more_teacher, more_labels = torch.tensor([[4.0, -1.0], [1.0, 0.5]]), torch.tensor([0, 1])
    more_student = torch.tensor([[1.0, 1.0], [-2.0, 0.5]])
    terms = method.method_terms(
        features(more_student, torch.zeros(2, 3)),
        features(more_teacher, torch.zeros(2, 3)),
        more_labels,
        more_labels,
    )
    centers = class_means_by_hand(torch.cat([TEACHER_EMB, more_teacher]), torch.cat([LABELS, more_labels]))
    assert terms["kdpp_nd"].item() == pytest.approx(
        nd_by_hand(more_student, more_teacher, more_labels, centers), rel=1e-6
    )


def test_class_means_stop_after_the_first_epoch_except_for_unseen_classes():
    method = build(nd_factor=1.0)
    method.set_epoch(1, 240)
    method.method_terms(features(STUDENT_EMB), features(TEACHER_EMB), LABELS, LABELS)
    method.set_epoch(2, 240)
    later_teacher, later_labels = torch.tensor([[-5.0, 1.0], [2.0, 3.0]]), torch.tensor([0, 1])
    later_student = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    terms = method.method_terms(
        features(later_student, torch.zeros(2, 3)),
        features(later_teacher, torch.zeros(2, 3)),
        later_labels,
        later_labels,
    )
    centers = class_means_by_hand(TEACHER_EMB, LABELS)  # class 0 keeps its first-epoch mean
    centers[1] = [2.0, 3.0]  # class 1 was not seen in the first epoch: its first sample is its mean
    assert terms["kdpp_nd"].item() == pytest.approx(
        nd_by_hand(later_student, later_teacher, later_labels, centers), rel=1e-6
    )
    # in eval mode nothing is added
    method.eval()
    method.method_terms(
        features(later_student, torch.zeros(2, 3)),
        features(-later_teacher, torch.zeros(2, 3)),
        later_labels,
        later_labels,
    )
    state = method.state_dict()
    assert state["class_means.counts"].tolist() == [2.0, 1.0, 1.0]
    assert state["class_means.sums"][1].tolist() == [2.0, 3.0]


def test_kd_term_is_warmed_up_from_zero_in_the_first_epoch():
    student_logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [1.0, 1.0, 1.0]])
    teacher_logits = torch.tensor([[3.0, -0.5, 0.2], [1.2, 0.4, -0.3], [0.0, 2.5, 0.5]])
    kd_by_hand = 0.0
    for s_row, t_row in zip(student_logits.tolist(), teacher_logits.tolist(), strict=True):
        p_s = [math.exp(v / 4) / sum(math.exp(u / 4) for u in s_row) for v in s_row]
        p_t = [math.exp(v / 4) / sum(math.exp(u / 4) for u in t_row) for v in t_row]
        kd_by_hand += sum(q * math.log(q / p) for q, p in zip(p_t, p_s, strict=True))
    kd_by_hand = 16 * kd_by_hand / 3
    method = build(kd_factor=3.5)
    for (epoch, num_epochs), ramp in [
        ((1, 240), 0.0),
        ((11, 240), 0.5),
        ((21, 240), 1.0),
        ((2, 24), 0.5),
        ((3, 24), 1.0),
    ]:
        method.set_epoch(epoch, num_epochs)
        terms = method.method_terms(
            features(STUDENT_EMB, student_logits), features(TEACHER_EMB, teacher_logits), LABELS, LABELS
        )
        assert terms["kdpp_kd"].item() == pytest.approx(ramp * 3.5 * kd_by_hand, rel=1e-5, abs=1e-9)


def test_a_narrower_student_embedding_is_projected_to_the_teachers_width():
    method = build(student_pooled=(3,), teacher_pooled=(2,), nd_factor=1.0)
    batchnorm, dropout, linear = method.projector
    assert (linear.in_features, linear.out_features) == (3, 2) and dropout.p == 0.5
    assert torch.equal(linear.bias, torch.zeros(2)) and torch.equal(batchnorm.weight, torch.ones(3))
    method.method_terms(features(torch.ones(3, 3)), features(TEACHER_EMB), LABELS, LABELS)  # fills the means
    method.eval()  # BN with its running statistics, no dropout: the projection is affine
    student = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5], [-1.0, 2.0, 0.0]])
    terms = method.method_terms(features(student), features(TEACHER_EMB), LABELS, LABELS)
    mean, var = batchnorm.running_mean.tolist(), batchnorm.running_var.tolist()
    weight = linear.weight.tolist()
    projected = torch.tensor(
        [
            [
                sum(w * (x - m) / math.sqrt(v + 1e-5) for w, x, m, v in zip(row, s, mean, var, strict=True))
                for row in weight
            ]
            for s in student.tolist()
        ]
    )
    centers = class_means_by_hand(TEACHER_EMB, LABELS)
    assert terms["kdpp_nd"].item() == pytest.approx(
        nd_by_hand(projected, TEACHER_EMB, LABELS, centers), rel=1e-5
    )
    assert build().projector is None  # equal widths: the student's own embedding


def test_kdpp_refuses_pairs_it_cannot_serve():
    kdpp = lookup(METHODS, "method", "kdpp")
    with pytest.raises(PairNotSupportedError, match="kdpp compares class distributions"):
        kdpp.check_pair(shapes_of(), shapes_of(logits=(4,)))
    with pytest.raises(PairNotSupportedError, match=r"kdpp compares embedding vectors.*\(5, 2\)"):
        kdpp.check_pair(shapes_of(), shapes_of(pooled=(5, 2)))


def dkd_parts_by_hand(z_s, z_t, target, temperature):
    """DKD (Zhao et al., CVPR 2022): KL of the binary [p_t, 1 - p_t] and of the renormalised non-targets."""

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p_s, p_t = softmax(z_s), softmax(z_t)
    b_s, b_t = [p_s[target], 1 - p_s[target]], [p_t[target], 1 - p_t[target]]
    rest_s = [p / (1 - p_s[target]) for k, p in enumerate(p_s) if k != target]
    rest_t = [p / (1 - p_t[target]) for k, p in enumerate(p_t) if k != target]
    tckd = sum(t * math.log(t / s) for s, t in zip(b_s, b_t, strict=True))
    nckd = sum(t * math.log(t / s) for s, t in zip(rest_s, rest_t, strict=True))
    return temperature**2 * tckd, temperature**2 * nckd


def test_dkdpp_is_warmed_up_dkd_plus_the_same_nd_loss():
    cls = lookup(METHODS, "method", "dkdpp")
    hp = cls.resolve_hp()
    assert {
        k: hp[k] for k in ("ce_weight", "alpha", "beta", "nd_factor", "temperature", "warmup_epochs")
    } == {
        "ce_weight": 1.0,
        "alpha": 2.5,
        "beta": 4.0,
        "nd_factor": 3.5,
        "temperature": 4.0,
        "warmup_epochs": 20,
    }
    labels = torch.arange(6) % NUM_CLASSES
    method = cls(hp, MethodContext(shapes_of(), shapes_of(), NUM_CLASSES, len(labels), labels))
    student_logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [1.0, 1.0, 1.0]])
    teacher_logits = torch.tensor([[3.0, -0.5, 0.2], [1.2, 0.4, -0.3], [0.0, 2.5, 0.5]])
    method.set_epoch(11, 240)  # half way through the warm-up
    terms = method.method_terms(
        features(STUDENT_EMB, student_logits), features(TEACHER_EMB, teacher_logits), LABELS, LABELS
    )
    assert terms.keys() == {"dkdpp_tckd", "dkdpp_nckd", "dkdpp_nd"}
    parts = [
        dkd_parts_by_hand(s, t, y, 4.0)
        for s, t, y in zip(student_logits.tolist(), teacher_logits.tolist(), LABELS.tolist(), strict=True)
    ]
    assert terms["dkdpp_tckd"].item() == pytest.approx(0.5 * 2.5 * sum(p[0] for p in parts) / 3, rel=1e-5)
    assert terms["dkdpp_nckd"].item() == pytest.approx(0.5 * 4.0 * sum(p[1] for p in parts) / 3, rel=1e-5)
    centers = class_means_by_hand(TEACHER_EMB, LABELS)
    expected_nd = 3.5 * nd_by_hand(STUDENT_EMB, TEACHER_EMB, LABELS, centers)
    assert terms["dkdpp_nd"].item() == pytest.approx(expected_nd, rel=1e-6)
    with pytest.raises(PairNotSupportedError, match="dkdpp compares class distributions"):
        cls.check_pair(shapes_of(), shapes_of(logits=(4,)))
