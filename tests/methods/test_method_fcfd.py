"""FCFD (Liu et al., ICLR 2023, methods/fcfd.py): the appearance L2 through the bridges, the mixed
student/teacher paths (their feature L2 and logit KL), the path sampling, the warm-up, the frozen
teacher and the pairs it refuses.

The loss is checked against the authors' formula written out here with the networks' own layers
(not `forward_from`) and plain tensor arithmetic (not the method's helpers)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_trainer
from torch import nn

from kdbench.core.errors import ConfigError
from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError
from kdbench.methods.fcfd import batch_statistics_only, candidate_paths
from kdbench.models import build_model

NUM_CLASSES = 3
IMAGE = (3, 16, 16)


def build(context, **overrides):
    cls = METHODS.get("fcfd")
    return cls(cls.resolve_hp(overrides), context)


def context_of(student, teacher, image_shape=IMAGE) -> MethodContext:
    probe = torch.zeros(2, *image_shape)
    with torch.no_grad():
        shapes = [FeatureShapes.of(model.eval()(probe, features=True)) for model in (student, teacher)]
    student.train()
    return MethodContext(
        *shapes,
        NUM_CLASSES,
        8,
        torch.zeros(8, dtype=torch.long),
        image_shape=image_shape,
        teacher=teacher,
        student=student,
    )


@pytest.fixture
def models():
    torch.manual_seed(3)
    student = build_model("resnet8", num_classes=NUM_CLASSES).train()
    teacher = build_model("resnet14", num_classes=NUM_CLASSES).eval().requires_grad_(False)
    return student, teacher


def squared_error_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def gap_relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0).mean(dim=(2, 3))


def kl_t(student_logits, teacher_logits, temperature):
    """KL(p_t^T || p_s^T) * T^2, batch mean, written out."""
    total = 0.0
    for s_row, t_row in zip(student_logits.tolist(), teacher_logits.tolist(), strict=True):
        log_zs = math.log(sum(math.exp(v / temperature) for v in s_row))
        log_zt = math.log(sum(math.exp(v / temperature) for v in t_row))
        for s, t in zip(s_row, t_row, strict=True):
            log_pt, log_ps = t / temperature - log_zt, s / temperature - log_zs
            total += math.exp(log_pt) * (log_pt - log_ps)
    return total / len(student_logits) * temperature**2


def later_layers(model: nn.Module, switch: int, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A CIFAR ResNet's stages after `switch`, then pool and fc: (stage outputs, logits)."""
    outputs = []
    for layer in [model.layer1, model.layer2, model.layer3][switch + 1 :]:
        x = layer(x)
        outputs.append(x)
    return outputs, model.fc(x.mean(dim=(2, 3)))


def features(model, images):
    """The model's Features; a frozen (eval-mode) teacher's without gradients, as the engine runs it."""
    if model.training:
        return model(images, features=True)
    with torch.no_grad():
        return model(images, features=True)


def test_the_loss_is_the_authors_formula_on_s2t_paths(models):
    student, teacher = models
    # both s->t paths of three stages: the draw cannot change which are summed
    method = build(
        context_of(student, teacher), extra_type="s2t", extra_paths=2, weight_l2=3.0, temperature=2.0
    )
    method.set_epoch(5, 240)  # the L2 ramp at 5 / 20
    images = torch.randn(4, *IMAGE)
    s, t = features(student, images), features(teacher, images)
    terms = method.method_terms(s, t, None, None)

    bridged = [method.to_teacher[j](s.stages[j]) for j in range(3)]
    appearance = sum(squared_error_mean(bridged[j], t.stages[j]) for j in range(3))
    appearance = appearance + squared_error_mean(gap_relu(bridged[2]), gap_relu(t.stages[2]))
    path_l2, path_kd = 0.0, 0.0
    for switch in (0, 1):
        later, logits = later_layers(teacher, switch, bridged[switch])
        for k, feature in enumerate(later, start=switch + 1):
            path_l2 = path_l2 + squared_error_mean(feature, t.stages[k])
        path_l2 = path_l2 + squared_error_mean(gap_relu(later[-1]), gap_relu(t.stages[2]))
        path_kd += kl_t(logits, t.logits, 2.0)
    ramp = 5 / 20
    assert terms["fcfd_app"].item() == pytest.approx(3.0 * ramp * appearance.item(), rel=1e-5)
    assert terms["fcfd_func_l2"].item() == pytest.approx(3.0 * ramp * path_l2.item(), rel=1e-5)
    assert terms["fcfd_func_kd"].item() == pytest.approx(path_kd, rel=1e-5)


def test_t2s_paths_run_the_students_later_stages_on_the_bridged_teacher_features(models):
    student, teacher = models
    method = build(context_of(student, teacher), extra_type="t2s", extra_paths=2, path_kd_weight=0.5)
    images = torch.randn(4, *IMAGE)
    s, t = features(student, images), features(teacher, images)
    running = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    terms = method.method_terms(s, t, None, None)
    # the student's BN running statistics are those of its own forward only
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in running.items())
    expected = 0.0
    for switch in (0, 1):
        with batch_statistics_only(student):
            _, logits = later_layers(student, switch, method.to_student[switch](t.stages[switch]))
        expected += kl_t(logits, t.logits, 4.0)
    assert terms["fcfd_func_l2"].item() == 0.0  # a t->s path's features are the student's: no L2
    assert terms["fcfd_func_kd"].item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_batch_statistics_only_normalises_by_the_batch_and_keeps_the_running_statistics():
    norm = nn.BatchNorm2d(2).train()
    x = torch.randn(4, 2, 3, 3) * 3 + 1
    before = (norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone())
    with batch_statistics_only(nn.Sequential(norm)):
        out = norm(x)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert torch.equal(norm.num_batches_tracked, before[2]) and norm.track_running_stats
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + norm.eps))


def test_candidate_paths_and_their_sampling(models):
    assert candidate_paths(3, "bi") == [("t2s", 0), ("t2s", 1), ("s2t", 0), ("s2t", 1)]
    assert candidate_paths(4, "s2t") == [("s2t", 0), ("s2t", 1), ("s2t", 2)]
    assert candidate_paths(3, "nomix") == []
    method = build(context_of(*models))
    torch.manual_seed(7)
    draws = [method.sample_paths() for _ in range(60)]
    assert all(len(d) == 2 and d[0] != d[1] for d in draws)
    assert {path for d in draws for path in d} == set(candidate_paths(3, "bi"))
    torch.manual_seed(7)
    assert [method.sample_paths() for _ in range(60)] == draws  # the run's seed decides them


def test_the_l2_ramp_follows_the_published_20_of_240_epochs(models):
    method = build(context_of(*models))
    assert method.warmup_factor == 1.0  # until the engine calls set_epoch
    method.set_epoch(1, 240)
    assert method.warmup_factor == pytest.approx(1 / 20)
    method.set_epoch(20, 240)
    assert method.warmup_factor == 1.0
    method.set_epoch(1, 24)  # a 24-epoch run ramps over 2
    assert method.warmup_factor == pytest.approx(0.5)


def test_bridges_follow_the_authors_shapes_and_activation():
    torch.manual_seed(0)
    student = build_model("wrn_16_1", num_classes=NUM_CLASSES).train()  # raw residual sums: not post-ReLU
    teacher = build_model("resnet14", num_classes=NUM_CLASSES).eval().requires_grad_(False)
    method = build(context_of(student, teacher))
    # into the post-ReLU teacher: LeakyReLU(0.1) last; into the WRN student: conv-BN only
    assert all(isinstance(b[-1], nn.LeakyReLU) and b[-1].negative_slope == 0.1 for b in method.to_teacher)
    assert all(isinstance(b[-1], nn.BatchNorm2d) for b in method.to_student)
    assert len(method.to_teacher) == 3 and len(method.to_student) == 2  # no bridge no path reads
    conv = method.to_teacher[0][0]
    assert (conv.kernel_size, conv.stride, conv.bias) == ((3, 3), (1, 1), None)


def test_bridges_resize_twice_and_half_as_large_maps():
    from kdbench.methods.fcfd import bridge

    down, up = bridge((4, 8, 8), (6, 4, 4), False), bridge((4, 4, 4), (6, 8, 8), True)
    assert down(torch.randn(2, 4, 8, 8)).shape == (2, 6, 4, 4) and down[0].stride == (2, 2)
    assert isinstance(up[0], nn.ConvTranspose2d) and up(torch.randn(2, 4, 4, 4)).shape == (2, 6, 8, 8)
    with pytest.raises(PairNotSupportedError, match="cannot bridge"):
        bridge((4, 16, 16), (6, 4, 4), False)


def shapes(stages, classes=NUM_CLASSES):
    return FeatureShapes(None, tuple(stages), tuple(stages), (stages[-1][0],), (classes,))


@pytest.mark.parametrize(
    ("student", "teacher", "reason"),
    [
        (shapes([(4, 8, 8), (8, 4, 4)]), shapes([(8, 8, 8), (8, 4, 4), (8, 2, 2)]), "one to one"),
        (shapes([(4, 8, 8), (8, 4, 4)]), shapes([(8, 8, 8), (8, 4, 4)], classes=5), "logits"),
        (shapes([(4, 8, 8)]), shapes([(8, 8, 8)]), "two stages or more"),
        (shapes([(4, 16, 16), (8, 4, 4)]), shapes([(8, 4, 4), (8, 4, 4)]), "cannot bridge"),
    ],
)
def test_check_pair_refuses(student, teacher, reason):
    with pytest.raises(PairNotSupportedError, match=reason):
        METHODS.get("fcfd").check_pair(student, teacher)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("fcfd").check_pair(student, None)


def test_a_model_without_forward_from_or_whose_stages_do_not_chain_is_refused(models):
    student, teacher = models

    class NoResume(nn.Module):  # the model protocol without forward_from
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, features=False):
            return self.inner(x, features=features)

    context = context_of(student, teacher)
    no_resume = MethodContext(**{**context.__dict__, "teacher": NoResume(teacher)})
    with pytest.raises(PairNotSupportedError, match="the teacher has no forward_from"):
        build(no_resume)
    vit = build_model("timm:test_vit", num_classes=NUM_CLASSES, image_size=16).eval()
    # a ViT's stages are token grids: refused by its kind (methods/base.py refuse_pair_kind) before fcfd
    # asks whether its stages chain
    with pytest.raises(PairNotSupportedError, match="fcfd reads CNN stage maps .* token model"):
        build(MethodContext(**{**context.__dict__, "teacher": vit}))


def test_bad_hyper_parameters_are_refused(models):
    context = context_of(*models)
    with pytest.raises(ConfigError, match="fcfd.extra_type='both'"):
        build(context, extra_type="both")
    with pytest.raises(PairNotSupportedError, match="extra_paths=3"):
        build(context, extra_type="s2t", extra_paths=3)


def test_gradients_reach_the_student_and_the_bridges_not_the_teacher(models):
    student, teacher = models
    method = build(context_of(student, teacher), extra_paths=4)  # every path
    assert student.training and not teacher.training  # the build's probes restored both modes
    images = torch.randn(4, *IMAGE)
    s, t = student(images, features=True), features(teacher, images)
    sum(method.method_terms(s, t, None, None).values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_the_engine_trains_fcfd_with_the_teacher_frozen(tiny_data, tmp_path):
    torch.manual_seed(1)
    teacher = build_model(
        "resnet14", num_classes=tiny_data.info.num_classes, in_chans=tiny_data.info.in_chans
    )
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = make_trainer(tiny_data, tmp_path, "fcfd", teacher=teacher)
    result = trainer.run()
    assert math.isfinite(result["history"][0]["train_loss"])
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert sum(p.numel() for p in trainer.method.parameters()) > 0
