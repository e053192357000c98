"""Which way a fused group fuses (kdbench/training/fused_plan.py `choose_style`): channel-grouped (HFTA,
kdbench/training/fused_channels.py) where the grouped model computes each member's own features,
else vmap (kdbench/training/fused.py). That the channel-grouped step is each member's own step is
tests/training/test_fused.py's lockstep test; across seeds, test_fused_groups.py's."""

from dataclasses import replace

import pytest
import torch
from test_fused import (  # noqa: I001  (the sibling test module)
    RECIPE,
    STEP_TOLERANCE,
    gradients,
    quiet,
    relative_difference,
    set_state,
    spec,
    state_of,
)

from kdbench.core.spec import RunSpec
from kdbench.data import PreparedData, load_dataset
from kdbench.methods.base import method_class
from kdbench.training.engine import Cohort, EpochMeter
from kdbench.training.fused_channels import ChannelGroup, NotFusable, member_features, stack_channels
from kdbench.training.fused_plan import choose_style, fusable
from kdbench.wrappers.vam import VAMConfig


@pytest.fixture(scope="module")
def cifar_sized():
    """ShuffleNets need 32x32 images."""
    info, train, test = load_dataset("synthetic", num_train=64, num_test=32, image_size=32)
    return PreparedData(info, train, test, None)


def started_members(data, student, tmp_path, wrappers=None):
    """Two student-baseline members of `student` (seeds 0 and 1), begun, and their first batch's images."""
    hp = method_class("student").resolve_hp({})
    specs = [
        RunSpec("student", student, "synthetic", hp=hp, recipe=RECIPE, seed=seed, wrappers=wrappers or {})
        for seed in (0, 1)
    ]
    options = dict(teacher=None, device=torch.device("cpu"), progress=quiet, progress_bar=False)
    cohort = Cohort(specs, data, out=tmp_path, fuse=True, **options)
    for member in cohort.members:
        member.begin_epoch(1)
    assert all(fusable(m) for m in cohort.members)
    return cohort.members, next(cohort.members[0].batches())[0]


@pytest.mark.parametrize(
    ("student", "wrappers", "style"),
    [
        ("resnet8", None, "channels"),
        ("mobile_half", None, "channels"),  # depthwise convolutions: groups x M
        ("resnet8", {"vam": VAMConfig(groups=2)}, "vmap"),  # VAM's attended convolutions
        ("ShuffleV1", None, "vmap"),  # its channel shuffle mixes the members' channels
    ],
)
def test_a_group_fuses_by_channels_where_they_are_its_members_own(
    student, wrappers, style, cifar_sized, tmp_path
):
    members, images = started_members(cifar_sized, student, tmp_path, wrappers)
    assert choose_style(members, images) == style


def test_a_shuffle_that_mixes_the_members_channels_is_seen_on_the_first_batch(cifar_sized, tmp_path):
    """ShuffleV1 has only layers HFTA groups, so the model builds; its features on the first batch are
    not its members' own, which is what sends it to vmap."""
    members, images = started_members(cifar_sized, "ShuffleV1", tmp_path)
    group = ChannelGroup(members)
    assert not group.matches_members(images)
    with torch.no_grad():
        fused = group.model(stack_channels([images, images]), features=True)
        own = members[1].student(images, features=True)
    assert not torch.allclose(member_features(fused, 2, 1).logits, own.logits, atol=1e-3)


def test_wrappers_and_layers_without_a_grouped_form_are_refused(cifar_sized, tmp_path):
    members, _ = started_members(cifar_sized, "resnet8", tmp_path, {"vam": VAMConfig(groups=2)})
    with pytest.raises(NotFusable, match="vam"):
        ChannelGroup(members)


def test_compiled_members_fuse_as_one_compiled_grouped_model(tiny_data, tiny_teacher, tmp_path):
    """`--compile on` kd members: one compiled channel-grouped model (static shapes; CUDA graphs on
    CUDA), whose steps' losses and gradients are each compiled member's own unfused ones, on a full
    batch and then on a last, partial one (compiled again for its shape, not dropped)."""
    specs = [replace(spec("kd", temperature=t), compile=True) for t in (1.0, 4.0)]
    options = dict(teacher=tiny_teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False)
    trained = {}
    for fuse in (True, False):
        cohort = Cohort(specs, tiny_data, out=tmp_path / str(fuse), fuse=fuse, time_probe=False, **options)
        for member in cohort.members:
            cohort.prepare_member(member)
            member.begin_epoch(1)
        trained[fuse] = cohort
    fused, plain = trained[True], trained[False]
    batch = next(fused.members[0].batches())
    (group,) = fused.fused_groups = fused.plan_fused([fused.members], (batch,))
    assert isinstance(group, ChannelGroup) and group.forward is not group.model  # compiled
    partial = tuple(part[:20] for part in batch)
    for images, labels, indices in (batch, partial):
        for twin, member in zip(fused.members, plain.members, strict=True):
            set_state(member, state_of(twin))  # each step from one state (test_fused.py's lockstep)
        losses = {}
        for cohort in (fused, plain):
            meters = {id(m): EpochMeter() for m in cohort.members}
            teacher_out = cohort.teacher_forward(images, cohort.members)
            cohort.step_members(cohort.members, (images, labels, indices), teacher_out, meters, 1)
            losses[id(cohort)] = [(meters[id(m)].loss_sum, meters[id(m)].images) for m in cohort.members]
        for twin, member, on, off in zip(
            fused.members, plain.members, losses[id(fused)], losses[id(plain)], strict=True
        ):
            assert on[1] == off[1] == len(labels)
            assert abs(on[0] - off[0]) <= STEP_TOLERANCE * max(1.0, off[0])
            assert relative_difference(gradients(twin, [group]), gradients(member, [])) <= STEP_TOLERANCE
        group.write_back()


def test_a_group_trains_every_epoch_in_the_same_tensors(tiny_data, tiny_teacher, tmp_path):
    """An epoch's group is the last epoch's, reloaded from its members in place: the fused parameters
    keep their addresses (a compiled step's CUDA graphs read them there), and the new epoch's lr is the
    members' (the lr decays between RECIPE's two epochs; test_fused.py's whole runs check the numbers)."""
    specs = [spec("kd", temperature=t) for t in (1.0, 4.0)]
    options = dict(teacher=tiny_teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False)
    cohort = Cohort(specs, tiny_data, out=tmp_path, fuse=True, time_probe=False, **options)
    for member in cohort.members:
        cohort.prepare_member(member)
    seen = []
    for epoch in (1, 2):
        for member, entry in cohort.train_streams(epoch, cohort.streams(epoch)):
            cohort.finish_epoch(member, entry)
        (group,) = cohort.built_groups.values()
        lrs = [g["lr"] for g in group.optimizer.param_groups]
        seen.append((group, {name: p.data_ptr() for name, p in group.params.items()}, lrs))
    (first, addresses, lr_first), (second, addresses_again, lr_second) = seen
    assert second is first and addresses_again == addresses
    assert lr_second == [lr * RECIPE.lr_decay_rate for lr in lr_first]


class _PooledLosesAChannel(torch.nn.Module):
    """A grouped model whose pooled features are one channel short of M blocks."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, features=False):
        out = self.model(images, features=True)
        out.pooled = out.pooled[:, 1:]
        return out if features else out.logits


def test_a_feature_that_is_not_m_channel_blocks_sends_the_group_to_vmap(cifar_sized, tmp_path):
    """The check says no (rather than failing the cohort) where a feature cannot be cut per member."""
    members, images = started_members(cifar_sized, "resnet8", tmp_path)
    group = ChannelGroup(members)
    assert group.matches_members(images)
    group.model = _PooledLosesAChannel(group.model)
    assert not group.matches_members(images)
