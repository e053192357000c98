"""SDD (Wei, Luo & Luo, CVPR 2024, methods/sdd.py) as SD-DKD: its multi-scale local logits, region weights and loss
against the paper's equations written out independently here (plain Python loops and math on small
hand-made tensors); its defaults, pair refusals and warm-up; and `MethodContext.student`, through
which it calls the student's own classifier without owning any parameter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from method_fixtures import model_pair_context as sdd_context
from method_fixtures import softmax

from kdbench.core.errors import ConfigError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import PairNotSupportedError
from kdbench.methods.sdd import pooled_map_of, region_weights, scale_decoupled_logits, sdd_dkd_parts
from kdbench.models import build_model
from kdbench.wrappers.vam import VAMConfig

NUM_CLASSES = 3


def kl(p_teacher, p_student):
    return sum(t * math.log(t / s) for s, t in zip(p_student, p_teacher, strict=True))


def dkd_row(student_row, teacher_row, label, alpha, beta, temperature):
    """DKD (Zhao et al., CVPR 2022, Eq. 1 split): alpha * TCKD + beta * NCKD, times T^2, one sample."""
    p_s, p_t = softmax(student_row, temperature), softmax(teacher_row, temperature)
    tckd = kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]])
    rest_s = [z for k, z in enumerate(student_row) if k != label]
    rest_t = [z for k, z in enumerate(teacher_row) if k != label]
    nckd = kl(softmax(rest_t, temperature), softmax(rest_s, temperature))
    return temperature**2 * (alpha * tckd + beta * nckd)


def argmax(values):
    return max(range(len(values)), key=lambda k: values[k])


def sdd_loss(student_local, teacher_local, labels, alpha, beta, temperature, complementary_weight):
    """L_SDD = D_con + w * D_com over every (sample, region), normalised by N * R (paper, Sec. 3.3;
    the authors' `multi_dkd`). Local logits as nested lists [sample][region][class]."""
    total, rows = 0.0, 0
    for student_regions, teacher_regions, label in zip(student_local, teacher_local, labels, strict=True):
        global_right = argmax(teacher_regions[0]) == label
        for student_row, teacher_row in zip(student_regions, teacher_regions, strict=True):
            local_right = argmax(teacher_row) == label
            weight = complementary_weight if local_right != global_right else 1.0
            total += weight * dkd_row(student_row, teacher_row, label, alpha, beta, temperature)
            rows += 1
    return total / rows


def cell_mean(feature_map, top, left, size):
    """Mean over a size x size window of one sample's (C, H, W) nested-list map, per channel."""
    return [
        sum(channel[y][x] for y in range(top, top + size) for x in range(left, left + size)) / size**2
        for channel in feature_map
    ]


def linear(weight, bias, vector):
    return [
        sum(w * v for w, v in zip(row, vector, strict=True)) + b for row, b in zip(weight, bias, strict=True)
    ]


def local_logits_by_hand(feature_map, weight, bias, scales):
    """[region][class] logits of one sample's (C, H, W) map, H = W a multiple of every scale."""
    side = len(feature_map[0])
    regions = []
    for scale in scales:
        size = side // scale
        for row in range(scale):
            for col in range(scale):
                regions.append(linear(weight, bias, cell_mean(feature_map, row * size, col * size, size)))
    return regions


def build_sdd(context, **overrides):
    cls = METHODS.get("sdd")
    return cls(cls.resolve_hp(overrides), context)


@pytest.fixture(scope="module")
def sdd_models():
    torch.manual_seed(3)
    student = build_model("resnet8", num_classes=NUM_CLASSES)
    teacher = build_model("resnet14", num_classes=NUM_CLASSES).eval().requires_grad_(False)
    image = torch.zeros(2, 3, 16, 16)
    shapes = [FeatureShapes.of(model(image, features=True)) for model in (student, teacher)]
    return student, teacher, *shapes


def test_local_logits_are_the_classifier_on_every_cell_of_the_1_2_4_pyramid():
    # a hand-made 2-channel 8x8 map and classifier (3 classes): every cell's logits by hand
    feature_map = torch.tensor(
        [
            [[float((3 * y + 5 * x) % 7 - 3) for x in range(8)] for y in range(8)],
            [[float(x * y % 5) for x in range(8)] for y in range(8)],
        ]
    )
    classifier = torch.nn.Linear(2, 3)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.0, 0.0]]))
        classifier.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    local = scale_decoupled_logits(feature_map[None], classifier, (1, 2, 4))
    assert local.shape == (1, 3, 1 + 4 + 16)
    expected = local_logits_by_hand(
        feature_map.tolist(), classifier.weight.tolist(), classifier.bias.tolist(), (1, 2, 4)
    )
    assert torch.allclose(local[0].T, torch.tensor(expected), atol=1e-5)
    # region 0 is the network's own global logit: the classifier on the pooled vector
    assert local[0, :, 0].tolist() == pytest.approx(
        classifier(feature_map.mean(dim=(1, 2))).tolist(), abs=1e-6
    )
    # M = [1, 2] (max_scale 2): the first 5 regions only
    assert torch.allclose(scale_decoupled_logits(feature_map[None], classifier, (1, 2)), local[:, :, :5])


def test_region_weights_double_exactly_the_complementary_regions():
    # teacher's local logits [sample][region][class]; labels 0 and 0
    teacher = [
        [[5, 0, 0], [4, 1, 0], [0, 3, 1]],  # global right: local right -> 1, local wrong -> 2
        [[0, 5, 1], [1, 0, 4], [6, 2, 0]],  # global wrong: local wrong (another class) -> 1, right -> 2
    ]
    weights = region_weights(
        torch.tensor(teacher, dtype=torch.float).permute(0, 2, 1), torch.tensor([0, 0]), 2.0
    )
    assert weights.tolist() == [[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]]
    # label 1 for sample 0: global (pred 0) wrong, r1 (pred 0) wrong -> 1, r2 (pred 1) right -> w
    # label 2 for sample 1: global (pred 1) wrong, r1 (pred 2) right -> w, r2 (pred 0) wrong -> 1
    weights = region_weights(
        torch.tensor(teacher, dtype=torch.float).permute(0, 2, 1), torch.tensor([1, 2]), 3.0
    )
    assert weights.tolist() == [[1.0, 1.0, 3.0], [1.0, 3.0, 1.0]]


def test_the_sdd_dkd_loss_is_the_weighted_per_region_dkd_over_n_times_r():
    torch.manual_seed(7)
    student = (2 * torch.randn(3, 4, 5)).round(decimals=1)  # N 3, K 4, R 5 (M = [1, 2])
    teacher = (2 * torch.randn(3, 4, 5)).round(decimals=1)
    labels = torch.tensor([0, 3, 1])
    to_lists = lambda local: local.permute(0, 2, 1).tolist()  # noqa: E731 [sample][region][class]
    for alpha, beta, temperature, weight in [(1.0, 8.0, 4.0, 2.0), (0.5, 2.0, 1.0, 3.0)]:
        tckd, nckd = sdd_dkd_parts(student, teacher, labels, temperature, weight)
        expected = sdd_loss(
            to_lists(student), to_lists(teacher), labels.tolist(), alpha, beta, temperature, weight
        )
        assert (alpha * tckd + beta * nckd).item() == pytest.approx(expected, rel=1e-5)
    # the two parts separately: alpha alone is TCKD, beta alone NCKD
    tckd, nckd = sdd_dkd_parts(student, teacher, labels, 4.0, 2.0)
    assert tckd.item() == pytest.approx(
        sdd_loss(to_lists(student), to_lists(teacher), labels.tolist(), 1, 0, 4.0, 2.0), rel=1e-5
    )
    assert nckd.item() == pytest.approx(
        sdd_loss(to_lists(student), to_lists(teacher), labels.tolist(), 0, 1, 4.0, 2.0), rel=1e-5
    )


def test_sdd_is_registered_with_the_authors_defaults():
    hp = METHODS.get("sdd").resolve_hp()
    expected = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "alpha": 1.0,
        "beta": 8.0,
        "warmup_epochs": 20,
        "max_scale": 4,
        "complementary_weight": 2.0,
    }
    assert {key: hp[key] for key in expected} == expected


def test_sdd_calls_each_networks_own_classifier_on_its_last_map_and_owns_no_parameter(sdd_models):
    student, teacher = sdd_models[:2]
    method = build_sdd(sdd_context(sdd_models, num_epochs=24))
    assert list(method.parameters()) == [] and method.state_dict() == {}
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 2, 1, 2])
    student_out = student(images, features=True)
    with torch.no_grad():
        teacher_out = teacher(images, features=True)
    method.set_epoch(1, 24)  # warm-up 20 of 240 epochs -> 2 of 24: half way
    terms = method.method_terms(student_out, teacher_out, labels, None)
    assert set(terms) == {"sdd_tckd", "sdd_nckd"}

    def local(model, out):  # 4x4 maps at 16 px: the 1 + 4 + 16 regions by hand
        weight, bias = model.fc.weight.tolist(), model.fc.bias.tolist()
        return [local_logits_by_hand(m, weight, bias, (1, 2, 4)) for m in out.stages[-1].tolist()]

    expected = sdd_loss(local(student, student_out), local(teacher, teacher_out), labels.tolist(), 1, 8, 4, 2)
    assert sum(terms.values()).item() == pytest.approx(0.5 * expected, rel=1e-4)
    method.set_epoch(2, 24)
    assert sum(method.method_terms(student_out, teacher_out, labels, None).values()).item() == pytest.approx(
        expected, rel=1e-4
    )
    # the gradient reaches the student's own classifier and backbone, never the teacher
    student.zero_grad()
    sum(terms.values()).backward()
    assert student.fc.weight.grad.abs().sum() > 0 and student.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_sdd_reads_wrn_through_its_final_bn_relu():
    model = build_model("wrn_16_1", num_classes=NUM_CLASSES)
    shapes = FeatureShapes.of(model(torch.zeros(2, 3, 16, 16), features=True))
    assert pooled_map_of(model, shapes, (3, 16, 16)) == "relu(preact[-1])"
    model = build_model("vgg8", num_classes=NUM_CLASSES)
    shapes = FeatureShapes.of(model(torch.zeros(2, 3, 32, 32), features=True))
    assert pooled_map_of(model, shapes, (3, 32, 32)) == "stages[-1]"


def test_sdd_refuses_what_it_cannot_serve(sdd_models):
    sdd = METHODS.get("sdd")
    teacher_shapes = sdd_models[3]
    for name in ("mobile_half", "ShuffleV2"):  # a 1x1 conv head between the last stage and the pooling
        model = build_model(name, num_classes=NUM_CLASSES)
        shapes = FeatureShapes.of(model.eval()(torch.zeros(2, 3, 32, 32), features=True))
        with pytest.raises(PairNotSupportedError, match="not exposed"):
            sdd.check_pair(shapes, teacher_shapes)
    with pytest.raises(PairNotSupportedError):
        sdd.check_pair(sdd_models[2], None)
    other = FeatureShapes(None, ((64, 4, 4),), ((64, 4, 4),), (64,), (NUM_CLASSES + 1,))
    with pytest.raises(PairNotSupportedError, match="logits"):
        sdd.check_pair(sdd_models[2], other)
    with pytest.raises(PairNotSupportedError, match="student"):
        build_sdd(sdd_context(sdd_models, student=None))
    with pytest.raises(ConfigError, match="power of two"):
        build_sdd(sdd_context(sdd_models), max_scale=3)


@pytest.mark.parametrize("vam_on", [False, True], ids=["plain", "vam"])
def test_the_engine_hands_sdd_the_live_student(vam_on, tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, "sdd", wrappers={"vam": VAMConfig()} if vam_on else {})
    assert trainer.method.context.student is trainer.student
    assert trainer.method.taps[0][1] is trainer.student.fc
    assert list(trainer.method.parameters()) == []
    before = trainer.student.fc.weight.detach().clone()
    trainer.train_epoch(1)
    assert not torch.equal(before, trainer.student.fc.weight)


def test_sdd_local_logits_equal_the_global_logits_for_region_zero(sdd_models):
    student = sdd_models[0]
    out = student(torch.randn(2, 3, 16, 16), features=True)
    local = scale_decoupled_logits(out.stages[-1], student.fc, (1, 2, 4))
    assert torch.allclose(local[:, :, 0], out.logits, atol=1e-5)
    assert isinstance(out, Features) and F.softmax(local, dim=1).shape == (2, NUM_CLASSES, 21)
