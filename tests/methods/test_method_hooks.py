"""The two optional engine hooks of the Method contract (methods/base.py): `extra_views` (MLKD's strong
view reaches a method only when it declares it, drawn from a stream of the run's own, restored by a
checkpoint) and `deploy` (cohort members with views or a deployed head equal their solo runs)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe
from kdbench.data import PreparedData, load_dataset
from kdbench.methods.base import Method, register_method
from kdbench.models import build_model
from kdbench.training import member as member_module
from kdbench.training.engine import Cohort


class _ViewRecorder(Method):
    """Records what reaches it, with a strong view declared (registered only inside the tests)."""

    name = "view-recorder"
    extra_views = ("strong",)
    seen: list = []

    def method_terms(self, student, teacher, labels, indices, views=None):
        self.seen.append((student, teacher, views))
        return {}


class _PlainRecorder(Method):
    """Records what reaches it, no view declared; its method_terms takes no `views`."""

    name = "plain-recorder"
    seen: list = []

    def method_terms(self, student, teacher, labels, indices):
        self.seen.append((student, teacher))
        return {}


@pytest.fixture
def recorders():
    for cls in (_ViewRecorder, _PlainRecorder):
        cls.seen.clear()
        register_method(cls)
    yield
    for cls in (_ViewRecorder, _PlainRecorder):
        METHODS.module_dict.pop(cls.name)


def test_extra_views_reach_a_method_only_when_it_declares_them(tiny_data, tmp_path, monkeypatch, recorders):
    trainer = make_trainer(tiny_data, tmp_path / "views", "view-recorder")
    trainer.train_epoch(1)
    student, teacher, views = _ViewRecorder.seen[-1]
    assert set(views) == {"strong"}
    strong_student, strong_teacher = views["strong"]
    assert (
        strong_student.logits.shape == student.logits.shape
        and strong_teacher.logits.shape == teacher.logits.shape
    )
    assert not torch.allclose(strong_teacher.logits, teacher.logits)  # another augmentation of the batch
    assert len(_ViewRecorder.seen) == 4  # 128 images, batch 32

    def no_views(*args, **kwargs):
        raise AssertionError("views drawn for a method that declares none")

    monkeypatch.setattr(member_module, "augment_views", no_views)
    plain = make_trainer(tiny_data, tmp_path / "plain", "plain-recorder")
    plain.train_epoch(1)
    assert len(_PlainRecorder.seen) == 4 and plain.view_generator is None
    # the views have a stream of their own: the batch stream is the same as without them
    assert torch.equal(plain.generator.get_state(), trainer.generator.get_state())


def test_extra_views_are_a_function_of_the_seed_and_survive_a_checkpoint(tiny_data, tmp_path, recorders):
    first = make_trainer(tiny_data, tmp_path / "a", "view-recorder")
    first.train_epoch(1)
    first.save_checkpoint(1)
    seen_first = [v["strong"][1].logits for _, _, v in _ViewRecorder.seen]
    _ViewRecorder.seen.clear()
    second = make_trainer(tiny_data, tmp_path / "b", "view-recorder")
    second.train_epoch(1)
    assert all(
        torch.equal(a, b[2]["strong"][1].logits) for a, b in zip(seen_first, _ViewRecorder.seen, strict=True)
    )
    resumed = make_trainer(tiny_data, tmp_path / "a", "view-recorder")
    assert resumed.try_resume()
    assert torch.equal(resumed.view_generator.get_state(), first.view_generator.get_state())


def test_cohort_members_with_views_or_a_deployed_head_equal_their_solo_runs(tmp_path):
    info, train, test = load_dataset("synthetic", num_train=96, num_test=32, image_size=16)
    data = PreparedData(info, train, test, None)
    recipe = Recipe(epochs=2, batch_size=32, lr_decay_epochs=())
    trainers = {
        m: make_trainer(data, tmp_path / f"solo-{m}", m, recipe=recipe) for m in ("kd", "mlkd", "simkd")
    }
    solo = {m: t.run() for m, t in trainers.items()}
    torch.manual_seed(1)
    teacher = build_model("resnet14", num_classes=info.num_classes, in_chans=info.in_chans)
    specs = [t.spec for t in trainers.values()]
    members = Cohort(specs, data, teacher=teacher, device=torch.device("cpu"), out=tmp_path / "cohort").run()
    for member in members:
        assert member.error is None, member.error
        alone = solo[member.spec.method]
        for ours, theirs in zip(member.result["history"], alone["history"], strict=True):
            assert ours["loss_terms"] == theirs["loss_terms"] and ours["test_top1"] == theirs["test_top1"]
        state = member.result["final_state"]
        assert all(torch.equal(state[k], alone["final_state"][k]) for k in state)
