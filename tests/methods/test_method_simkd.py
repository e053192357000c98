"""SimKD (Chen et al., CVPR 2022, methods/simkd.py): the projector MSE, the reused teacher classifier, the deployed student.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from method_fixtures import build, mean, model_pair_context, softmax
from torch import nn

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import PairNotSupportedError
from kdbench.methods.simkd import ReusedClassifierStudent, simkd_projector
from kdbench.models import build_model
from kdbench.training import engine
from kdbench.training.measure import inference_flops, parameter_count

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def simkd_models():
    torch.manual_seed(3)
    student = build_model("resnet8", num_classes=NUM_CLASSES)
    teacher = build_model("resnet14", num_classes=NUM_CLASSES).eval()
    image = torch.zeros(2, 3, 16, 16)
    return (
        student,
        teacher,
        FeatureShapes.of(student(image, features=True)),
        FeatureShapes.of(teacher(image, features=True)),
    )


def simkd(models, **overrides):
    # SimKD reads the teacher only: no student in its context
    return build("simkd", model_pair_context(models, NUM_CLASSES, student=None), **overrides)


def test_simkd_refuses_a_teacher_whose_classifier_does_not_read_its_last_stage():
    student = FeatureShapes(None, ((4, 4, 4),), ((4, 4, 4),), (4,), (NUM_CLASSES,))
    teacher = FeatureShapes(None, ((8, 2, 2),), ((8, 2, 2),), (16,), (NUM_CLASSES,))  # a head in between
    with pytest.raises(PairNotSupportedError, match="classifier"):
        METHODS.get("simkd").check_pair(student, teacher)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("simkd").check_pair(student, None)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("semckd").check_pair(student, None)
    other = FeatureShapes(None, (), (), (4,), (NUM_CLASSES + 1,))
    for name in ("ctkd", "mlkd"):
        with pytest.raises(PairNotSupportedError, match="logits"):
            METHODS.get(name).check_pair(student, other)


def test_simkd_loss_is_the_mse_between_the_projected_student_map_and_the_teachers(simkd_models):
    method = simkd(simkd_models)
    torch.manual_seed(0)
    student_map = torch.randn(2, 64, 4, 4)  # larger than the teacher's 2x2 map: pooled 2x2 first
    teacher_map = torch.randn(2, 64, 2, 2)
    term = method.method_terms(
        Features(None, None, stages=[student_map]), Features(None, None, stages=[teacher_map]), None, None
    )
    pooled = [
        [
            [
                [
                    mean([student_map[n, c, 2 * i + a, 2 * j + b].item() for a in (0, 1) for b in (0, 1)])
                    for j in (0, 1)
                ]
                for i in (0, 1)
            ]
            for c in range(64)
        ]
        for n in range(2)
    ]
    projected = method.projector(torch.tensor(pooled))
    squares = [
        (projected[n, c, i, j].item() - teacher_map[n, c, i, j].item()) ** 2
        for n in range(2)
        for c in range(64)
        for i in range(2)
        for j in range(2)
    ]
    assert term["simkd"].item() == pytest.approx(mean(squares), rel=1e-5)


def test_simkd_reuses_a_frozen_copy_of_the_teachers_classifier_for_ce(simkd_models):
    _, teacher, _, _ = simkd_models
    method = simkd(simkd_models, ce_weight=1.0)
    assert (
        torch.equal(method.classifier.weight, teacher.fc.weight)
        and not method.classifier.weight.requires_grad
    )
    torch.manual_seed(1)
    student_map, teacher_map = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 2, 2)
    labels = torch.tensor([0, 2])
    terms = method.losses(
        Features(torch.zeros(2, NUM_CLASSES), None, stages=[student_map]),
        Features(torch.zeros(2, NUM_CLASSES), None, stages=[teacher_map]),
        labels,
        None,
    )
    projected = method.projector(F.avg_pool2d(student_map, 2))
    pooled = [[mean(projected[n, c].flatten().tolist()) for c in range(64)] for n in range(2)]
    weight, bias = teacher.fc.weight.tolist(), teacher.fc.bias.tolist()
    expected = []
    for n in range(2):
        logits = [
            sum(w * x for w, x in zip(weight[k], pooled[n], strict=True)) + bias[k]
            for k in range(NUM_CLASSES)
        ]
        expected.append(-math.log(softmax(logits)[labels[n]]))
    assert terms["ce"].item() == pytest.approx(mean(expected), rel=1e-5)


def test_simkds_deployed_student_counts_projector_and_teacher_classifier_and_is_what_is_evaluated(
    tiny_data, tmp_path, monkeypatch
):
    evaluated = []
    real_evaluate = engine.evaluate

    def recording_evaluate(model, *args, **kwargs):
        evaluated.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", recording_evaluate)
    trainer = make_trainer(tiny_data, tmp_path, "simkd")
    result = trainer.run()
    method, student = trainer.method, trainer.student
    # deployed = student without its own classifier + projector + the teacher's classifier
    expected = (
        parameter_count(student)
        - parameter_count(student.fc)
        + parameter_count(method.projector)
        + parameter_count(method.classifier)
    )
    assert result["overhead"]["deploy_params"] == expected
    example = torch.zeros(1, 3, 16, 16)
    assert result["overhead"]["deploy_flops_per_image"] > inference_flops(student, example)
    # the accuracy recorded is that of the deployed network
    assert evaluated and all(isinstance(model, ReusedClassifierStudent) for model in evaluated)
    deployed = method.deploy(student)
    top1 = real_evaluate(deployed, tiny_data.test, tiny_data.info, torch.device("cpu"))["top1"]
    assert result["metrics"]["last_top1"] == top1
    with torch.no_grad():
        features = student.eval()(tiny_data.test.images[:4].float(), features=True)
        projected = method.projector.eval()(features.stages[-1]).mean(dim=(2, 3))
        assert torch.allclose(
            deployed.eval()(tiny_data.test.images[:4].float()), method.classifier(projected), atol=1e-5
        )
    assert set(result["final_state"]) >= {"projector.0.weight", "classifier.weight"}


def test_simkds_projector_is_the_authors_bottleneck_with_its_checkpoint_keys():
    """DefangChen/SimKD models/util.py: conv1x1 (C_s -> C_t / f)-BN-ReLU, conv3x3-BN-ReLU, conv1x1 (-> C_t)-BN-ReLU;
    its state_dict keys are those of checkpoints written before (resume reads them)."""
    projector = simkd_projector(8, 16, 2)
    assert [type(layer) for layer in projector] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    convs = [layer for layer in projector if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (8, 8, (1, 1), None),
        (8, 8, (3, 3), None),
        (8, 16, (1, 1), None),
    ]
    norm = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(projector.state_dict()) == [
        "0.weight",
        *(f"1.{key}" for key in norm),
        "3.weight",
        *(f"4.{key}" for key in norm),
        "6.weight",
        *(f"7.{key}" for key in norm),
    ]
