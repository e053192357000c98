"""Invariants of the engine and the protocol, each a test that fails when it breaks.

- the teacher is frozen and in eval mode: its parameters and buffers are bit-identical after
  distillation, whatever mode it was handed over in;
- evaluation changes no statistic of the student (BatchNorm running stats) and restores its mode;
- measuring a run's costs changes neither its models nor its random streams;
- a method receives exactly the features it declares;
- an init stage trains what it declares (the student only when `trains_student`), never the teacher;
- the seed alone sets the batch order; the lr follows the recipe's milestones.
"""

import pytest
import torch
from conftest import make_trainer

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe
from kdbench.methods.base import Method, register_method
from kdbench.models import build_model
from kdbench.training.evaluation import evaluate
from kdbench.training.measure import measure_costs


def fresh_teacher(data):
    torch.manual_seed(1)  # a new model is in train mode with trainable parameters
    return build_model("resnet14", num_classes=data.info.num_classes, in_chans=data.info.in_chans)


def trainer_for(method, data, tmp_path, teacher=None, epochs=1, **recipe):
    recipe = Recipe(**{"epochs": epochs, "batch_size": 32, "lr_decay_epochs": (), **recipe})
    return make_trainer(data, tmp_path, method, teacher=teacher, recipe=recipe)


def state_of(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_same_state(before, module):
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"changed: {changed}"


@pytest.mark.parametrize("method", ["kd", "fitnet", "crd", "ab"])
def test_the_teacher_is_frozen_in_eval_mode_and_bit_identical_after_distillation(method, tiny_data, tmp_path):
    teacher = fresh_teacher(tiny_data)
    before = state_of(teacher)
    trainer_for(method, tiny_data, tmp_path, teacher=teacher).run()
    assert not any(module.training for module in teacher.modules())
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert_same_state(before, teacher)


def test_evaluation_changes_no_student_statistic_and_restores_its_mode(tiny_data):
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=tiny_data.info.num_classes, in_chans=tiny_data.info.in_chans)
    student.train()
    before = state_of(student)
    evaluate(student, tiny_data.test, tiny_data.info, torch.device("cpu"))
    assert student.training
    assert_same_state(before, student)


def test_measuring_costs_changes_no_model_and_no_random_stream(tiny_data, tmp_path):
    trainer = trainer_for("crd", tiny_data, tmp_path)
    student, method = state_of(trainer.student), state_of(trainer.method)
    rng, generator = torch.get_rng_state(), trainer.generator.get_state()
    measure_costs(trainer.member)
    assert_same_state(student, trainer.student)
    assert_same_state(method, trainer.method)
    assert torch.equal(rng, torch.get_rng_state()) and torch.equal(generator, trainer.generator.get_state())


class _Recorder(Method):
    """Records which feature fields reach it (registered only inside the test below)."""

    name = "feature-recorder"
    student_features = ("pooled",)
    teacher_features = ("stages",)
    seen: list = []

    def method_terms(self, student, teacher, labels, indices):
        self.seen.append((student, teacher))
        return {}


def test_a_method_receives_exactly_the_features_it_declares(tiny_data, tmp_path):
    register_method(_Recorder)
    try:
        trainer_for("feature-recorder", tiny_data, tmp_path).train_epoch(1)
    finally:
        METHODS.module_dict.pop(_Recorder.name)
    student, teacher = _Recorder.seen[-1]
    assert (
        student.pooled is not None and student.stages == [] and student.preact == [] and student.stem is None
    )
    assert teacher.stages and teacher.pooled is None and teacher.preact == [] and teacher.stem is None


@pytest.mark.parametrize(("method", "trains_student"), [("ft", False), ("ab", True), ("fsp", True)])
def test_an_init_stage_trains_what_it_declares_and_never_the_teacher(
    method, trains_student, tiny_data, tmp_path
):
    teacher = fresh_teacher(tiny_data)
    trainer = trainer_for(method, tiny_data, tmp_path, teacher=teacher)
    student, teacher_before = state_of(trainer.student), state_of(teacher)
    trainer.run_init_stage()
    changed = any(
        not torch.equal(student[name], value)
        for name, value in trainer.student.state_dict().items()
        if name.endswith("weight")
    )
    assert changed == trains_student
    assert_same_state(teacher_before, teacher)


def test_the_seed_alone_sets_the_batch_order(tiny_data, tmp_path):
    def order(seed):
        trainer = trainer_for("student", tiny_data, tmp_path)
        trainer.generator.manual_seed(seed)
        return torch.cat([indices for _, _, indices in trainer.batches()])

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(len(tiny_data.train.labels)))  # each image once


def test_the_lr_follows_the_recipe_milestones(tiny_data, tmp_path):
    trainer = trainer_for("student", tiny_data, tmp_path, epochs=3, lr=0.05, lr_decay_epochs=(2,))
    result = trainer.run()
    # RepDistiller decays once epoch > milestone (adjust_learning_rate): epochs 1, 2 at 0.05, epoch 3 at 0.005
    assert [entry["lr"] for entry in result["history"]] == pytest.approx([0.05, 0.05, 0.005])
