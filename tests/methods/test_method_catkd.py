"""CAT-KD (Guo et al., CVPR 2023, methods/catkd.py): class activation maps from each network's own
classifier, pooled to R x R and compared by MSE, optionally normalised.

Each loss is checked against the authors' formula written out here independently of the method's
code (plain Python on small hand-made tensors and real tiny networks)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_trainer
from method_fixtures import model_pair_context as context_of

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.errors import ConfigError
from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import PairNotSupportedError
from kdbench.models import build_model
from kdbench.wrappers.vam import VAMConfig

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(5)
    student = build_model("resnet8", num_classes=NUM_CLASSES)
    teacher = build_model("wrn_16_1", num_classes=NUM_CLASSES).eval().requires_grad_(False)
    image = torch.zeros(2, 3, 16, 16)
    shapes = [FeatureShapes.of(model.eval()(image, features=True)) for model in (student, teacher)]
    student.train()
    return student, teacher, *shapes


def build(models, **overrides):
    cls = METHODS.get("catkd")
    return cls(cls.resolve_hp(overrides), context_of(models))


def cams_by_hand(feature_map, weight):
    """CAM_k(y, x) = sum_c W_kc F_c(y, x) of one sample's (C, H, W) nested-list map: [class][y][x]."""
    height, width = len(feature_map[0]), len(feature_map[0][0])
    return [
        [
            [sum(w * feature_map[c][y][x] for c, w in enumerate(row)) for x in range(width)]
            for y in range(height)
        ]
        for row in weight
    ]


def pooled_cells(cam, resolution):
    """Average pooling of an H x W map (H, W multiples of `resolution`) to resolution x resolution."""
    size = len(cam) // resolution
    return [
        sum(cam[y][x] for y in range(top, top + size) for x in range(left, left + size)) / size**2
        for top in range(0, len(cam), size)
        for left in range(0, len(cam), size)
    ]


def cat_loss_by_hand(student_maps, teacher_maps, student_weight, teacher_weight, resolution, normalize):
    squares, count = 0.0, 0
    for s_map, t_map in zip(student_maps, teacher_maps, strict=True):
        for s_cam, t_cam in zip(
            cams_by_hand(s_map, student_weight), cams_by_hand(t_map, teacher_weight), strict=True
        ):
            s_cells, t_cells = pooled_cells(s_cam, resolution), pooled_cells(t_cam, resolution)
            if normalize:
                s_cells = [v / math.sqrt(sum(u * u for u in s_cells)) for v in s_cells]
                t_cells = [v / math.sqrt(sum(u * u for u in t_cells)) for v in t_cells]
            squares += sum((a - b) ** 2 for a, b in zip(s_cells, t_cells, strict=True))
            count += len(s_cells)
    return squares / count


def test_catkd_defaults_are_the_authors_resnet32x4_resnet8x4_config():
    hp = METHODS.get("catkd").resolve_hp()
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "cam_resolution", "normalize")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 15.0,
        "cam_resolution": 2,
        "normalize": False,
    }


@pytest.mark.parametrize(("resolution", "normalize"), [(2, False), (2, True), (4, True), (1, False)])
def test_catkd_is_the_mse_of_the_pooled_cams_of_each_networks_own_classifier(models, resolution, normalize):
    student, teacher = models[:2]
    method = build(models, cam_resolution=resolution, normalize=normalize)
    assert list(method.parameters()) == [] and method.state_dict() == {}
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    student_out = student(images, features=True)
    with torch.no_grad():
        teacher_out = teacher(images, features=True)
    terms = method.losses(student_out, teacher_out, labels, labels)
    assert terms.keys() == {"ce", "catkd"}
    teacher_map = torch.relu(teacher_out.preact[-1])  # WRN pools after its final BN-ReLU
    expected = cat_loss_by_hand(
        student_out.stages[-1].tolist(),
        teacher_map.tolist(),
        student.fc.weight.tolist(),
        teacher.fc.weight.tolist(),
        resolution,
        normalize,
    )
    assert terms["catkd"].item() == pytest.approx(15.0 * expected, rel=1e-4)
    # the gradient reaches the student's own classifier and backbone, never the teacher
    student.zero_grad()
    terms["catkd"].backward()
    assert student.fc.weight.grad.abs().sum() > 0 and student.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_catkd_refuses_what_it_cannot_serve(models):
    catkd = METHODS.get("catkd")
    student_shapes = models[2]
    head = build_model("mobile_half", num_classes=NUM_CLASSES)  # a 1x1 conv head before the pooling
    head_shapes = FeatureShapes.of(head.eval()(torch.zeros(2, 3, 32, 32), features=True))
    with pytest.raises(PairNotSupportedError, match="catkd applies the teacher's classifier.*not exposed"):
        catkd.check_pair(student_shapes, head_shapes)
    other = FeatureShapes(None, ((64, 4, 4),), ((64, 4, 4),), (64,), (NUM_CLASSES + 1,))
    with pytest.raises(PairNotSupportedError, match="catkd compares class distributions"):
        catkd.check_pair(student_shapes, other)
    with pytest.raises(PairNotSupportedError, match="catkd builds the student's class activation maps"):
        catkd(catkd.resolve_hp(), context_of(models, student=None))
    with pytest.raises(ConfigError, match="catkd.cam_resolution=0"):
        build(models, cam_resolution=0)


@pytest.mark.parametrize("vam_on", [False, True], ids=["plain", "vam"])
def test_the_engine_hands_catkd_the_live_student(vam_on, tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, "catkd", wrappers={"vam": VAMConfig()} if vam_on else {})
    assert trainer.method.taps[0][1] is trainer.student.fc
    before = trainer.student.fc.weight.detach().clone()
    trainer.train_epoch(1)
    assert not torch.equal(before, trainer.student.fc.weight)
