"""Fused members (kdbench/training/fused.py, `--fuse on`) compute each member's own mathematics: its
losses, gradients, SGD step and BatchNorm statistics equal its unfused (= solo, tests/training/test_cohort.py)
run's up to fp32 reassociation; a fused rerun is bit-identical; members that do not fuse train
exactly as unfused.

The tolerances, measured on these runs (resnet8 on 16x16 synthetic images, one thread), as
||fused - unfused|| / ||unfused|| over a member's tensors: one step from one state differs by at
most 1.5e-6 (STEP_TOLERANCE: 1e-5). Over a whole run the differences grow where a reassociated
value crosses a ReLU's kink (the gradient jumps there): 3.7e-4 after two epochs for ttm, whose loss
climbs fastest here, below 1e-4 for the others (RUN_TOLERANCE: 2e-3). Unfused runs do the same: a
1e-7 perturbation of the weights moved kd's, wsld's and fitnet's gradients by 1e-3 to 2e-2 within
three steps. Hence the lockstep comparison below resets the unfused twin to the fused state at
every step.
"""

import pytest
import torch

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.methods.base import method_class
from kdbench.training.engine import Cohort, EpochMeter, NonFiniteLossError
from kdbench.training.fused_plan import fusable, group_key, plan_groups

STEP_TOLERANCE = 1e-5  # one step from one state: losses (relative above 1), gradients, state after it
RUN_TOLERANCE = 2e-3  # two epochs, fused vs unfused throughout: final weights and statistics, losses
RECIPE = Recipe(epochs=2, batch_size=32, lr_decay_epochs=(1,))  # the lr decays between the epochs
FUSING = sorted(name for name in METHODS.module_dict if getattr(method_class(name), "fuses", False))


def quiet(_line):
    pass


def spec(method, **hp):
    cls = method_class(method)
    teacher = "resnet14" if cls.needs_teacher else None
    return RunSpec(method, "resnet8", "synthetic", teacher=teacher, hp=cls.resolve_hp(hp), recipe=RECIPE)


# every fusable method, one of them twice with another hyper-parameter, and one that does not fuse
SPECS = [*(spec(m) for m in FUSING), spec("kd", temperature=2.0), spec("fitnet")]


def cohort(data, teacher, out, fuse):
    options = dict(
        teacher=teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False, time_probe=False
    )
    return Cohort(SPECS, data, out=out, fuse=fuse, **options)


def started(trained, fuse, style="vmap"):
    """`trained`'s members prepared for epoch 1, member i's weights scaled by 1 + i / 100 (each starts
    elsewhere); its fused groups planned where `fuse`, in `style`."""
    for index, member in enumerate(trained.members):
        trained.prepare_member(member)
        member.begin_epoch(1)
        with torch.no_grad():
            for parameter in member.student.parameters():
                parameter.mul_(1 + index / 100)
    styles = {group_key(m): style for m in trained.members}
    trained.fused_groups = plan_groups(trained.members, styles=styles) if fuse else []
    return trained


def state_of(member) -> dict:
    """A member's student weights and buffers, and its momentum buffers (under `momentum.NAME`)."""
    state = {name: value.clone() for name, value in member.student.state_dict().items()}
    for name, parameter in member.student.named_parameters():
        momentum = member.optimizer.state.get(parameter, {}).get("momentum_buffer")
        if momentum is not None:
            state[f"momentum.{name}"] = momentum.clone()
    return state


def set_state(member, state: dict) -> None:
    member.student.load_state_dict({k: v for k, v in state.items() if not k.startswith("momentum.")})
    for name, parameter in member.student.named_parameters():
        if f"momentum.{name}" in state:
            member.optimizer.state[parameter]["momentum_buffer"] = state[f"momentum.{name}"].clone()


def gradients(member, groups) -> dict:
    for group in groups:
        if member in group.members:
            return group.member_gradients(group.members.index(member))
    return {name: p.grad.clone() for name, p in member.student.named_parameters()}


def relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all floating-point tensors of `a` (the same keys in `b`); integer tensors
    (BatchNorm's step counts) must be equal."""
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in floats)
    difference = torch.cat([(a[k].double() - b[k].double()).flatten() for k in floats])
    return float(difference.norm() / torch.cat([b[k].double().flatten() for k in floats]).norm())


def lockstep(data, teacher, out, style, steps=3):
    """The cohort fused and unfused, stepped side by side on the same batches. Before each step every
    unfused member is set to its fused twin's state (weights, BatchNorm statistics, momentum), so each
    step compares the fused step with the member's own from one state: a difference of a step is that
    step's, not one carried over a ReLU's kink from an earlier reassociation. For each step and member:
    (loss fused, loss unfused, gradients fused, unfused, state after the step fused, unfused)."""
    fused = started(cohort(data, teacher, out / "on", fuse=True), fuse=True, style=style)
    plain = started(cohort(data, teacher, out / "off", fuse=False), fuse=False)
    (group,) = fused.fused_groups
    assert group.style == style
    compared = []
    for _, batch, same in zip(
        range(steps), fused.members[0].batches(), plain.members[0].batches(), strict=False
    ):
        assert all(torch.equal(a, b) for a, b in zip(batch, same, strict=True))
        group.write_back()
        for twin, member in zip(fused.members, plain.members, strict=True):
            set_state(member, state_of(twin))
        losses = {}
        for trained in (fused, plain):
            meters = {id(m): EpochMeter() for m in trained.members}
            members = trained.members
            trained.step_members(members, batch, trained.teacher_forward(batch[0], members), meters, 1)
            losses[id(trained)] = [meters[id(m)].loss_sum for m in members]
        group.write_back()
        compared.append(
            [
                (
                    loss_on,
                    loss_off,
                    gradients(twin, [group]),
                    gradients(member, []),
                    state_of(twin),
                    state_of(member),
                )
                for twin, member, loss_on, loss_off in zip(
                    fused.members, plain.members, losses[id(fused)], losses[id(plain)], strict=True
                )
            ]
        )
    return compared


def test_fusable_methods_are_declared_and_the_others_step_alone(tiny_data, tiny_teacher, tmp_path):
    assert {"student", "kd"} <= set(FUSING)
    trained = cohort(tiny_data, tiny_teacher, tmp_path, fuse=True)
    (group,) = plan_groups(trained.members)
    assert [m.spec for m in group.members] == sorted(SPECS[:-1], key=lambda s: s.run_id)  # run-id order
    assert not fusable(trained.members[-1])  # fitnet: its connector trains, it reads features


@pytest.mark.parametrize("style", ["vmap", "channels"])
def test_each_fused_step_is_the_members_own_step(style, tiny_data, tiny_teacher, tmp_path):
    """Losses, gradients, and the state after the step (weights by the member's SGD with momentum and
    weight decay, its own BatchNorm statistics, its momentum) of each of the first three steps, fused
    either way (kdbench/training/fused.py `VmapGroup`, fused_channels.py `ChannelGroup`)."""
    for step in lockstep(tiny_data, tiny_teacher, tmp_path, style):
        for spec_, (loss_on, loss_off, grads_on, grads_off, after_on, after_off) in zip(
            SPECS, step, strict=True
        ):
            assert abs(loss_on - loss_off) <= STEP_TOLERANCE * max(1.0, abs(loss_off)), spec_.method
            assert relative_difference(grads_on, grads_off) <= STEP_TOLERANCE, spec_.method
            assert relative_difference(after_on, after_off) <= STEP_TOLERANCE, spec_.method
            if spec_.method == "fitnet":  # not fused: exactly as unfused
                assert loss_on == loss_off
                assert all(torch.equal(grads_on[k], grads_off[k]) for k in grads_on)
                assert all(torch.equal(after_on[k], after_off[k]) for k in after_on)


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_teacher, tmp_path_factory):
    """The cohort trained to the end unfused, fused, and fused again."""
    out = tmp_path_factory.mktemp("fused")
    teacher_state = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    trained = {
        name: cohort(tiny_data, tiny_teacher, out / name, fuse).run()
        for name, fuse in (("off", False), ("on", True), ("again", True))
    }
    assert all(torch.equal(teacher_state[k], v) for k, v in tiny_teacher.state_dict().items())
    assert not tiny_teacher.training  # the teacher stays frozen, in eval mode
    return trained


def test_a_fused_run_ends_where_its_unfused_run_ends(runs):
    for off, on in zip(runs["off"], runs["on"], strict=True):
        assert off.error is None and on.error is None
        state_off, state_on = off.result["final_state"], on.result["final_state"]
        assert relative_difference(state_on, state_off) <= RUN_TOLERANCE, off.spec.method  # BatchNorm too
        for entry_off, entry_on in zip(off.result["history"], on.result["history"], strict=True):
            assert entry_off["lr"] == entry_on["lr"]
            assert (
                abs(entry_off["train_loss"] - entry_on["train_loss"])
                <= RUN_TOLERANCE * entry_off["train_loss"]
            )
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


def test_a_sweep_with_fuse_on_records_its_fused_members_outside_the_spec(tmp_path):
    """`fuse` reaches the loop through the sweep and the worker; each record's environment says with
    how many members it was fused, and its run id is the unfused run's (the same experiment)."""
    from kdbench.core import store
    from kdbench.core.catalog import Pair
    from kdbench.execution.sweep import Sweep, SweepRequest

    teacher_recipe = Recipe(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=(), train_subset=128)
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=(), train_subset=128)
    options = dict(
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=recipe,
        teacher_recipe=teacher_recipe,
        vam_modes=[False],
        threads=1,
    )
    methods = ["kd", "dkd", "fitnet"]
    Sweep(SweepRequest(methods=methods, out=tmp_path / "on", fuse=True, **options), progress=quiet).run()
    Sweep(SweepRequest(methods=methods, out=tmp_path / "off", **options), progress=quiet).run()
    fused = {
        r["spec"]["method"]: r for r in store.load_records(tmp_path / "on") if r["spec"]["method"] in methods
    }
    plain = {
        r["spec"]["method"]: r for r in store.load_records(tmp_path / "off") if r["spec"]["method"] in methods
    }
    assert {m: r["environment"]["fused_members"] for m, r in fused.items()} == {
        "kd": 2,
        "dkd": 2,
        "fitnet": 0,
    }
    assert {m: r["environment"].get("fused_style") for m, r in fused.items()} == {
        "kd": "channels",  # resnet8: the channel-grouped model's features are the members' own
        "dkd": "channels",
        "fitnet": None,
    }
    assert all("fused_members" not in r["environment"] for r in plain.values())
    assert {m: r["run_id"] for m, r in fused.items()} == {m: r["run_id"] for m, r in plain.items()}


def test_a_member_failing_inside_a_fused_group_is_recorded_and_the_others_go_on(
    tiny_data, tiny_teacher, tmp_path
):
    """kd weighted by 1e30 passes the cost probe (no update) and its first step, whose update makes its
    weights infinite: a non-finite loss at its second step, recorded failed, as unfused; the members
    fused beside it end where their unfused runs end."""
    specs = [spec("student"), spec("kd", kd_weight=1e30), spec("kd")]
    options = dict(teacher=tiny_teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False)
    fused = Cohort(specs, tiny_data, out=tmp_path / "on", fuse=True, **options).run()
    plain = Cohort(specs, tiny_data, out=tmp_path / "off", **options).run()
    assert (
        [type(t.error) for t in fused]
        == [type(t.error) for t in plain]
        == [type(None), NonFiniteLossError, type(None)]
    )
    assert [t.fused_members for t in fused] == [3, 3, 3]
    for on, off in ((fused[0], plain[0]), (fused[2], plain[2])):
        assert relative_difference(on.result["final_state"], off.result["final_state"]) <= RUN_TOLERANCE
