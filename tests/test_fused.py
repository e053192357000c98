"""Fused members (kdbench/training/fused.py, `--fuse on`) compute each member's own mathematics: its
losses, gradients, SGD step and BatchNorm statistics equal its unfused (= solo, tests/test_cohort.py)
run's up to fp32 reassociation; a fused rerun is bit-identical; members that do not fuse train
exactly as unfused.

The tolerance: measured on these runs (resnet8 on 16x16 synthetic images, one thread), the largest
difference fused vs unfused was below 1e-6 on losses, gradients and BatchNorm statistics after
three steps and on the weights after two epochs; TOLERANCE leaves a margin of ten.
"""

import pytest
import torch

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import PreparedData, load_dataset
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.training.engine import Cohort, EpochMeter
from kdbench.training.fused import fusable, plan_groups

TOLERANCE = 1e-5  # absolute, on values of order one (losses, weights, gradients, BatchNorm statistics)
RECIPE = Recipe(epochs=2, batch_size=32, lr_decay_epochs=(1,))  # the lr decays between the epochs
FUSING = sorted(name for name in METHODS.module_dict if getattr(method_class(name), "fuses", False))


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def data():
    info, train, test = load_dataset("synthetic", num_train=128, num_test=64, image_size=16)
    return PreparedData(info, train, test, None)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(1)
    return build_model("resnet14", num_classes=data.info.num_classes, in_chans=data.info.in_chans)


def spec(method, **hp):
    cls = method_class(method)
    teacher = "resnet14" if cls.needs_teacher else None
    return RunSpec(method, "resnet8", "synthetic", teacher=teacher, hp=cls.resolve_hp(hp), recipe=RECIPE)


# every fusable method, one of them twice with another hyper-parameter, and one that does not fuse
SPECS = [*(spec(m) for m in FUSING), spec("kd", temperature=2.0), spec("fitnet")]


def cohort(data, teacher, out, fuse):
    options = dict(teacher=teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False)
    return Cohort(SPECS, data, out=out, fuse=fuse, **options)


def first_steps(data, teacher, out, fuse, steps=3):
    """Each member's (loss, gradients) at each of its first `steps` steps, and its BatchNorm buffers
    after them; member i's weights are first scaled by 1 + i / 10, so each starts elsewhere."""
    trained = cohort(data, teacher, out, fuse)
    members = trained.members
    for index, member in enumerate(members):
        trained.prepare_member(member)
        member.begin_epoch(1)
        with torch.no_grad():
            for parameter in member.student.parameters():
                parameter.mul_(1 + index / 10)
    groups = plan_groups(members) if fuse else []
    trained.fused_groups = groups
    seen = {id(m): [] for m in members}
    for _, batch in zip(range(steps), members[0].batches(), strict=False):
        meters = {id(m): EpochMeter() for m in members}
        trained.step_members(members, batch, trained.teacher_forward(batch[0], members), meters, 1)
        for member in members:
            assert member.error is None
            seen[id(member)].append((meters[id(member)].loss_sum, gradients(member, groups)))
    for group in groups:
        group.write_back()
    buffers = {id(m): {n: b.clone() for n, b in m.student.named_buffers()} for m in members}
    return [(seen[id(m)], buffers[id(m)]) for m in members], groups


def gradients(member, groups):
    for group in groups:
        if member in group.members:
            index = group.members.index(member)
            return {name: stacked.grad[index].clone() for name, stacked in group.params.items()}
    return {name: p.grad.clone() for name, p in member.student.named_parameters()}


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_fusable_methods_are_declared_and_the_others_step_alone(data, teacher, tmp_path):
    assert {"student", "kd"} <= set(FUSING)
    trained = cohort(data, teacher, tmp_path, fuse=True)
    (group,) = plan_groups(trained.members)
    assert [m.spec for m in group.members] == SPECS[:-1]
    assert not fusable(trained.members[-1])  # fitnet: its connector trains, it reads features


def test_each_fused_member_steps_as_its_unfused_run(data, teacher, tmp_path):
    unfused, _ = first_steps(data, teacher, tmp_path / "off", fuse=False)
    fused, groups = first_steps(data, teacher, tmp_path / "on", fuse=True)
    assert len(groups) == 1 and len(groups[0].members) == len(SPECS) - 1
    for spec_, (steps_off, buffers_off), (steps_on, buffers_on) in zip(SPECS, unfused, fused, strict=True):
        for (loss_off, grads_off), (loss_on, grads_on) in zip(steps_off, steps_on, strict=True):
            assert abs(loss_off - loss_on) <= TOLERANCE, spec_.method
            assert largest_difference(grads_off, grads_on) <= TOLERANCE, spec_.method
        assert largest_difference(buffers_off, buffers_on) <= TOLERANCE, spec_.method  # per member
        if spec_.method == "fitnet":  # not fused: exactly as unfused
            assert all(torch.equal(buffers_off[k], buffers_on[k]) for k in buffers_off)
            for (loss_off, grads_off), (loss_on, grads_on) in zip(steps_off, steps_on, strict=True):
                assert loss_off == loss_on and all(torch.equal(grads_off[k], grads_on[k]) for k in grads_off)


@pytest.fixture(scope="module")
def runs(data, teacher, tmp_path_factory):
    """The cohort trained to the end unfused, fused, and fused again."""
    out = tmp_path_factory.mktemp("fused")
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    trained = {
        name: cohort(data, teacher, out / name, fuse).run()
        for name, fuse in (("off", False), ("on", True), ("again", True))
    }
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training  # the teacher stays frozen, in eval mode
    return trained


def test_a_fused_run_ends_where_its_unfused_run_ends(runs):
    for off, on in zip(runs["off"], runs["on"], strict=True):
        assert off.error is None and on.error is None
        state_off, state_on = off.result["final_state"], on.result["final_state"]
        assert largest_difference(state_off, state_on) <= TOLERANCE, off.spec.method  # BatchNorm stats too
        for entry_off, entry_on in zip(off.result["history"], on.result["history"], strict=True):
            assert entry_off["lr"] == entry_on["lr"]
            assert abs(entry_off["train_loss"] - entry_on["train_loss"]) <= TOLERANCE
            assert entry_off["test_top1"] == pytest.approx(entry_on["test_top1"], abs=100 / 64 + 1e-9)
    assert [t.fused_members for t in runs["on"]] == [len(SPECS) - 1] * (len(SPECS) - 1) + [0]
    assert [t.fused_members for t in runs["off"]] == [0] * len(SPECS)


def test_a_fused_rerun_is_bit_identical_and_a_member_that_does_not_fuse_is_unchanged(runs):
    for first, again in zip(runs["on"], runs["again"], strict=True):
        state, state_again = first.result["final_state"], again.result["final_state"]
        assert all(torch.equal(state[k], state_again[k]) for k in state)
        assert first.result["history"][-1]["train_loss"] == again.result["history"][-1]["train_loss"]
    off, on = runs["off"][-1], runs["on"][-1]  # fitnet, beside a fused group
    assert all(torch.equal(off.result["final_state"][k], v) for k, v in on.result["final_state"].items())
    assert [e["train_loss"] for e in off.result["history"]] == [e["train_loss"] for e in on.result["history"]]
