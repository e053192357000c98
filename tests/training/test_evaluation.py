"""The evaluation pass (kdbench/training/evaluation.py): per-class accuracy, the confusion matrix, the
expected calibration error and the agreement with the teacher against values worked out by hand on fixed
logits; every record of a real run carries them (and passes the record check); the teacher's test outputs
are computed once per cohort, whatever its members and evaluated epochs."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import make_trainer
from torch import nn

from kdbench.core import store
from kdbench.core.records import record_problem
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import ImageData, iterate_batches
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.training import evaluation
from kdbench.training.engine import Cohort
from kdbench.training.evaluation import evaluate, teacher_outputs

CPU = torch.device("cpu")
LABELS = [0, 0, 1, 2]
# probabilities at temperature 1, one row per test image, chosen off the 15 bins' edges
STUDENT = [[0.70, 0.20, 0.10], [0.22, 0.68, 0.10], [0.08, 0.82, 0.10], [0.25, 0.20, 0.55]]
TEACHER = [[0.60, 0.30, 0.10], [0.50, 0.40, 0.10], [0.10, 0.80, 0.10], [0.20, 0.20, 0.60]]


class FixedLogits(nn.Module):
    """Gives image i of `data` the logits log(probabilities[i]) in whatever batch it comes (each image is
    one grey level, its position in the split)."""

    def __init__(self, probabilities, data, info):
        super().__init__()
        batches = iterate_batches(data, info, len(data.labels), shuffle=False, augment=False, device=CPU)
        self.keys = next(batches)[0][:, 0, 0, 0]
        self.logits = torch.tensor(probabilities).log()

    def forward(self, images):
        which = (images[:, 0, 0, 0, None] - self.keys[None]).abs().argmin(dim=1)
        return self.logits[which]


@pytest.fixture
def hand_made(tiny_data, monkeypatch):
    """Four images of three classes, evaluated in batches of three (two batches: the teacher's outputs are
    matched by position, not by batch)."""
    monkeypatch.setattr(evaluation, "EVAL_BATCH_SIZE", 3)
    info = replace(tiny_data.info, num_classes=3, classes=("a", "b", "c"))
    images = torch.arange(len(LABELS), dtype=torch.uint8).mul(40).view(-1, 1, 1, 1)
    images = images.expand(-1, info.in_chans, *info.image_size).contiguous()
    data = ImageData(images, torch.tensor(LABELS))
    return data, info


def test_top1_per_class_accuracy_and_confusion_of_fixed_logits(hand_made):
    data, info = hand_made
    result = evaluate(FixedLogits(STUDENT, data, info), data, info, CPU)
    # predictions 0, 1, 1, 2 for labels 0, 0, 1, 2
    assert result["top1"] == 75.0
    assert result["top5"] == 100.0  # three classes: top-3
    details = result["evaluation"]
    assert details["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert details["per_class_top1"] == [50.0, 100.0, 100.0]
    assert (details["images"], details["classes"], details["ece_bins"]) == (4, 3, 15)
    assert details["agreement_top1"] is None and details["teacher_kl"] is None  # no teacher given


def test_expected_calibration_error_is_per_bin_not_per_image(hand_made):
    data, info = hand_made
    details = evaluate(FixedLogits(STUDENT, data, info), data, info, CPU)["evaluation"]
    # bins of width 1/15: confidence 0.70 (right) and 0.68 (wrong) share bin 10, 0.82 (right) is in bin 12,
    # 0.55 (right) in bin 8: (|1 - 1.38| + |1 - 0.82| + |1 - 0.55|) / 4 images
    assert details["ece"] == pytest.approx(100 * (0.38 + 0.18 + 0.45) / 4, abs=1e-5)  # float32 softmax


def test_a_class_without_test_images_has_no_accuracy(hand_made):
    data, info = hand_made
    info = replace(info, num_classes=4, classes=("a", "b", "c", "d"))
    student = FixedLogits([[*row, 1e-6] for row in STUDENT], data, info)
    details = evaluate(student, data, info, CPU)["evaluation"]
    assert details["per_class_top1"] == [50.0, 100.0, 100.0, None]
    assert [row[3] for row in details["confusion"]] == [0, 0, 0, 0] and details["confusion"][3] == [0] * 4


def test_agreement_and_kl_with_the_teacher(hand_made):
    data, info = hand_made
    reference = teacher_outputs(FixedLogits(TEACHER, data, info), data, info, CPU)
    details = evaluate(FixedLogits(STUDENT, data, info), data, info, CPU, teacher=reference)["evaluation"]
    # teacher's top-1: 0, 0, 1, 2; student's: 0, 1, 1, 2
    assert details["agreement_top1"] == 75.0
    kl = [
        sum(q * math.log(q / p) for q, p in zip(t, s, strict=True))
        for t, s in zip(TEACHER, STUDENT, strict=True)
    ]
    assert details["teacher_kl"] == pytest.approx(sum(kl) / len(kl), rel=1e-5)
    same = evaluate(FixedLogits(TEACHER, data, info), data, info, CPU, teacher=reference)["evaluation"]
    assert same["agreement_top1"] == 100.0 and same["teacher_kl"] == pytest.approx(0.0, abs=1e-6)


def tiny_spec(method, tiny_data, epochs=1):
    cls = method_class(method)
    return RunSpec(
        method=method,
        student="resnet8",
        teacher="resnet14" if cls.needs_teacher else None,
        dataset="synthetic",
        hp=cls.resolve_hp(),
        recipe=Recipe(epochs=epochs, batch_size=32, lr_decay_epochs=()),
    )


@pytest.mark.parametrize("method", ["kd", "student"])
def test_a_real_runs_record_carries_the_evaluation_and_passes_the_record_check(tiny_data, tmp_path, method):
    result = make_trainer(tiny_data, tmp_path, method).run()
    result.pop("final_state")
    spec = tiny_spec(method, tiny_data)
    record = store.new_record(spec.to_dict(), spec.run_id, spec.kind, "done", {}, result)
    details = record["evaluation"]
    assert record_problem(record, f"{spec.run_id}.json") is None
    classes = tiny_data.info.num_classes
    assert (
        details["epoch"] == 1 and details["classes"] == classes and len(details["per_class_top1"]) == classes
    )
    diagonal = sum(details["confusion"][k][k] for k in range(classes))
    assert 100.0 * diagonal / details["images"] == record["metrics"]["last_top1"]  # the same pass
    assert 0 <= details["ece"] <= 100
    assert all("evaluation" not in entry for entry in record["history"])  # history entries stay small
    if method == "student":  # no teacher: no agreement
        assert details["agreement_top1"] is None and details["teacher_kl"] is None
    else:
        assert 0 <= details["agreement_top1"] <= 100 and details["teacher_kl"] >= 0
    path = store.write_record(tmp_path, record)
    assert store.read_record(path)["evaluation"] == details


def test_the_teachers_test_outputs_are_computed_once_per_cohort(tiny_data, tmp_path, monkeypatch):
    passes = []
    real_pass = evaluation._teacher_pass

    def counted_pass(*args):
        passes.append(args[1])
        return real_pass(*args)

    monkeypatch.setattr(evaluation, "_teacher_pass", counted_pass)
    torch.manual_seed(1)
    teacher = build_model(
        "resnet14", num_classes=tiny_data.info.num_classes, in_chans=tiny_data.info.in_chans
    )
    specs = [tiny_spec(method, tiny_data, epochs=2) for method in ("kd", "dkd", "student")]
    cohort = Cohort(specs, tiny_data, teacher=teacher, device=CPU, out=tmp_path, progress=lambda _: None)
    trained = cohort.run()
    # two members taught, two evaluated epochs: one teacher pass, on the test split
    assert len(passes) == 1 and passes[0] is tiny_data.test
    kd, dkd, student = (t.result["evaluation"] for t in trained)
    assert student["agreement_top1"] is None
    # the kept outputs are the teacher's own: the same agreement as from a fresh pass
    fresh = real_pass(teacher, tiny_data.test, tiny_data.info, CPU)
    member = cohort.members[0]
    deployed = member.method.deploy(member.student)
    alone = evaluate(deployed, tiny_data.test, tiny_data.info, CPU, teacher=fresh)["evaluation"]
    assert (alone["agreement_top1"], alone["teacher_kl"]) == (kd["agreement_top1"], kd["teacher_kl"])
    assert dkd["agreement_top1"] is not None


def test_a_run_resumed_after_its_last_epoch_keeps_its_evaluation(tiny_data, tmp_path):
    recipe = Recipe(epochs=2, batch_size=32, lr_decay_epochs=())
    first = make_trainer(tiny_data, tmp_path, "kd", recipe=recipe).run()
    again = make_trainer(tiny_data, tmp_path, "kd", recipe=recipe)
    resumed = again.run()  # from the checkpoint of epoch 2: no epoch left, no evaluation pass
    assert again.member.start_epoch == 3
    assert resumed["evaluation"] == first["evaluation"] and resumed["evaluation"]["epoch"] == 2
