"""The one training loop: the student baseline, every method, every cohort and teacher training use it.

A run is a member (kdbench/training/member.py: its student, method, wrappers, optimizer, random
streams and checkpoint); the loop trains members that share one seed, recipe, teacher and data in
lockstep, and a run alone is a cohort of one. Each epoch it draws each batch once, runs the frozen
teacher once on it (the union of the members' feature taps), steps every member on it, then
evaluates each member, records its epoch and checkpoints it. Members whose batch generators are in
different states (an init stage drew batches of its own, a member resumed from another epoch, or a
member of another seed where fused members train across seeds) train as separate streams of the same
cohort: one after another, or, with `fuse`, in lockstep, so that fused groups
(kdbench/training/fused.py) span them. A member that fails (non-finite loss, a pair its
method cannot serve) is recorded as failed with its error; the others go on. Each member keeps its
own global random stream, swapped in around everything it does, so a member's record is
bit-identical to the same spec trained alone (tests/training/test_cohort.py): cohorts are an execution
strategy, never a protocol change.

A lean loop of kdbench's own rather than mmengine's Runner: a KD step needs a frozen teacher
forward, method-declared feature taps and method-owned trainable modules, which the Runner would
need a custom model wrapper and hooks for, and its per-iteration hook dispatch and logging weigh on
the small models' steps (`kdbench bench` times this loop against a bare one). The loop knows no
method and no wrapper by name. What is not training lives beside it: the cost measurement
(kdbench/training/measure.py), the deployed student and its export check (export.py), the record's
measured part (results.py).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdbench.core.features import Features
from kdbench.core.progress import bar as progress_bar
from kdbench.core.progress import to_stderr
from kdbench.core.spec import RunSpec
from kdbench.core.store import TrainResult
from kdbench.data import PreparedData
from kdbench.methods.base import PairNotSupportedError
from kdbench.training.evaluation import evaluate, teacher_outputs
from kdbench.training.fused import Batch, FusedGroup
from kdbench.training.fused_plan import (
    built_key,
    choose_style,
    free_memory_bytes,
    group_key,
    partition,
    plan_groups,
    size_limit,
)
from kdbench.training.measure import measure_costs
from kdbench.training.member import EpochMeter, Member, NonFiniteLossError, forward
from kdbench.training.results import train_result

FAILURES = (NonFiniteLossError, PairNotSupportedError)  # a member's own failure: recorded, the others go on


@dataclass
class Trained:
    """What a spec of a cohort ends with: its measured result (with its deployed `final_state`),
    or the failure that stopped it."""

    spec: RunSpec
    result: TrainResult | None = None
    error: Exception | None = None
    fused_members: int = 0  # members of its fused group (kdbench/training/fused.py); 0: not fused
    fused_group: tuple[str, ...] = ()  # the run ids of that group, in its order
    fused_style: str = ""  # how that group fused: "channels" or "vmap" (kdbench/training/fused.py)


@contextmanager
def guard(member: Member) -> Iterator[None]:
    """Run as `member` (its global random stream); a failure of the member is kept, not raised."""
    try:
        with member.own_rng():
            yield
    except FAILURES as err:
        member.error = err


class Cohort:
    """Train `specs` (one recipe, one teacher, one data; one seed, or several where `fuse`) in
    lockstep; `run()` returns each spec's `Trained`, in order."""

    def __init__(
        self,
        specs: list[RunSpec],
        data: PreparedData,
        *,
        teacher: nn.Module | None,
        device: torch.device,
        out: Path,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
        on_epoch: Callable[[RunSpec, dict], None] | None = None,
        fuse: bool = False,
        fuse_budget: int | None = None,
        fuse_style: str | None = None,
        time_probe: bool = True,
    ):
        self.data, self.teacher, self.device = data, teacher, device
        self.time_probe = time_probe  # time / student measured (kdbench/training/ratios.py), or left null
        self.fuse = fuse  # fusable members of a stream train as one batched model (kdbench/training/fused.py)
        self.fused_groups: list[FusedGroup] = []  # the current epoch's
        # bytes a fused group may take (None: the device's free memory, kdbench/training/fused_plan.py),
        # and the most members a group of each key holds within them, measured on its first step
        self.fuse_budget = fuse_budget
        self.fuse_limits: dict[tuple, int] = {}
        # how each key's groups fuse (kdbench/training/fused_plan.py `choose_style`), chosen on its first
        # batch; `fuse_style` ("vmap", "channels") sets it for every key (`kdbench bench` compares them)
        self.fuse_style = fuse_style
        self.fuse_styles: dict[tuple, str] = {}
        # the last epoch's groups (fused_plan.py `built_key`): the next epoch reloads them in place
        self.built_groups: dict[tuple, FusedGroup] = {}
        # run id -> the largest fused group it trained in: (its run ids, its style)
        self.fused_with: dict[str, tuple[tuple[str, ...], str]] = {}
        self.progress = progress or to_stderr
        # a live bar for people at a terminal (None: when stderr is one); logs get per-epoch lines
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.on_epoch = on_epoch  # each finished epoch's history entry (trackers, kdbench/core/trackers.py)
        self.epochs = specs[0].recipe.epochs
        self.runs = [self._build(spec, Path(out)) for spec in specs]  # a member, or why it was refused
        self.members = [run for run in self.runs if isinstance(run, Member)]

    def _build(self, spec: RunSpec, out: Path) -> Member | Trained:
        try:  # a member seeds the global stream with its spec's seed, as a run alone does
            return Member(
                spec, self.data, teacher=self.teacher, device=self.device, out=out, progress=self.progress
            )
        except FAILURES as err:
            return Trained(spec, error=err)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.error is None and m.result is None]

    # -- the loop, top to bottom -------------------------------------------------------------
    def run(self) -> list[Trained]:
        """Train every member to the end, each resuming from its checkpoint where it has one."""
        for member in self.live():
            with guard(member):
                self.prepare_member(member)
        for epoch in range(1, self.epochs + 1):
            # fused, every stream of the epoch trains at once (members of several seeds fuse); else one by one
            streams = [self.streams(epoch)] if self.fuse else [[members] for members in self.streams(epoch)]
            for together in streams:
                for member, entry in self.train_streams(epoch, together):
                    with guard(member):
                        self.finish_epoch(member, entry)
        for member in self.live():
            with guard(member):
                member.result = train_result(member)
                member.result["wall_seconds"] = time.perf_counter() - member.started
        return [
            run
            if isinstance(run, Trained)
            else Trained(
                run.spec,
                run.result,
                run.error,
                run.fused_members,
                *self.fused_with.get(run.spec.run_id, ((), "")),
            )
            for run in self.runs
        ]

    def prepare_member(self, member: Member) -> None:
        """Everything before the first epoch: resume from a checkpoint, measure costs, init stage."""
        member.try_resume()
        member.costs = measure_costs(member, self.time_probe)
        if not member.init_done:
            member.run_init_stage()
            member.save_checkpoint(0)

    def streams(self, epoch: int) -> list[list[Member]]:
        """The members training this epoch, grouped by identical generator state (one stream each)."""
        groups: dict[bytes, list[Member]] = {}
        for member in self.live():
            if member.start_epoch <= epoch:
                key = member.generator.get_state().numpy().tobytes()
                groups.setdefault(key, []).append(member)
        return list(groups.values())

    def train_stream(self, epoch: int, members: list[Member]) -> list[tuple[Member, dict]]:
        """One epoch of `members` over one stream, the batches and the teacher forward shared:
        each surviving member's history entry (not yet evaluated)."""
        return self.train_streams(epoch, [members])

    def train_streams(self, epoch: int, streams: list[list[Member]]) -> list[tuple[Member, dict]]:
        """One epoch of these streams' members, the streams in lockstep (a batch of each per step, each
        drawn once by its leader; the teacher run once on each distinct batch, `teacher_forwards`):
        each surviving member's history entry (not yet evaluated)."""
        members = [m for stream in streams for m in stream]
        for member in members:
            with guard(member):
                member.begin_epoch(epoch)
        meters = {id(m): EpochMeter() for m in members}
        leaders = [stream[0] for stream in streams]
        draws = [self.stream_batches(leaders[0], epoch), *(leader.batches() for leader in leaders[1:])]
        shared_seconds, mark = 0.0, time.perf_counter()
        for step, batches in enumerate(zip(*draws, strict=True)):
            if step == 0:
                self.fused_groups = self.plan_fused(streams, batches) if self.fuse else []
            teacher_outs = self.teacher_forwards(streams, batches)
            shared_seconds += time.perf_counter() - mark  # drawing the batches + the teacher forwards
            self.step_streams(streams, batches, teacher_outs, meters, epoch)
            mark = time.perf_counter()
        for group in self.fused_groups:  # each member's own student and optimizer hold its state again
            group.write_back()
        self.fused_groups = []
        entries = []
        for leader, stream in zip(leaders, streams, strict=True):
            for member in [m for m in stream if m.error is None]:
                # every member of a stream drew its batches: its generator ends where the leader's does
                member.generator.set_state(leader.generator.get_state())
                meter = meters[id(member)]
                meter.seconds += shared_seconds / len(members)  # the shared work, split evenly
                with guard(member):
                    entries.append((member, member.close_epoch(epoch, meter)))
        return entries

    def plan_fused(self, streams: list[list[Member]], batches: tuple[Batch, ...]) -> list[FusedGroup]:
        """The epoch's fused groups (kdbench/training/fused_plan.py), each in its style and within the
        memory budget: a group of a kind not seen yet chooses its style and is measured on this first
        batch, then planned again."""
        live = [m for stream in streams for m in stream if m.error is None]
        for part in partition(live, self.fuse_limits):
            key = group_key(part[0])
            if key not in self.fuse_styles:
                images = batches[self.stream_index(streams, part[0])][0]
                self.fuse_styles[key] = self.fuse_style or choose_style(part, images)
        groups = plan_groups(live, self.fuse_limits, self.fuse_styles, self.built_groups)
        unmeasured = [g for g in groups if group_key(g.members[0]) not in self.fuse_limits]
        if unmeasured:
            self.fused_groups = groups  # what the teacher forwards serve
            teacher_outs = self.teacher_forwards(streams, batches)
            budget = free_memory_bytes(self.device) if self.fuse_budget is None else self.fuse_budget
            for group in unmeasured:
                own = [batches[self.stream_index(streams, m)] for m in group.members]
                limit = size_limit(group, own, [teacher_outs[id(m)] for m in group.members], budget)
                self.fuse_limits[group_key(group.members[0])] = limit
            # anew, or reloaded from the members: the trial step moved the fused copies
            groups = plan_groups(live, self.fuse_limits, self.fuse_styles, {built_key(g): g for g in groups})
        self.built_groups = {built_key(group): group for group in groups}
        for group in groups:
            for member in group.members:
                if len(group.members) > member.fused_members:
                    member.fused_members = len(group.members)
                    self.fused_with[member.spec.run_id] = (group.run_ids, group.style)
        return groups

    @staticmethod
    def stream_index(streams: list[list[Member]], member: Member) -> int:
        return next(i for i, stream in enumerate(streams) if member in stream)

    def stream_batches(self, leader: Member, epoch: int):
        """The stream's batches, drawn by its leader's generator (behind a live bar where asked)."""
        batches = leader.batches()
        if not self.progress_bar:
            return batches
        steps_per_epoch = math.ceil(len(self.data.train) / leader.spec.recipe.batch_size)
        return progress_bar(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="step")

    def teacher_forward(self, images: torch.Tensor, members: list[Member]) -> Features | None:
        """The frozen teacher on a batch, once for every member: the union of their feature taps."""
        if self.teacher is None:
            return None
        fields = tuple(sorted({f for m in members for f in m.teacher_features}))
        leader = members[0]  # members share precision and compile (the cohort key)
        with torch.no_grad(), leader.precision.autocast():
            return forward(leader.train_teacher, images, fields)

    def teacher_forwards(
        self, streams: list[list[Member]], batches: tuple[Batch, ...]
    ) -> dict[int, Features | None]:
        """The teacher's features on each member's batch, by id(member): one forward per stream for its
        members that step alone, one per fused group on its streams' distinct batches concatenated (the
        teacher is in eval mode: each image's features are its own, up to reassociation); a group on one
        stream shares the stream's."""
        readers: dict[tuple[int, ...], list[Member]] = {}  # stream indices -> the members reading them
        for group in self.fused_groups:
            indices = tuple(dict.fromkeys(self.stream_index(streams, m) for m in group.members))
            readers.setdefault(indices, []).extend(group.members)
        fused = {id(m) for group in self.fused_groups for m in group.members}
        for index, stream in enumerate(streams):
            alone = [m for m in stream if id(m) not in fused]
            if alone:
                readers.setdefault((index,), []).extend(alone)
        found: dict[int, Features | None] = {}
        for indices, members in readers.items():
            images = [batches[i][0] for i in indices]
            out = self.teacher_forward(images[0] if len(images) == 1 else torch.cat(images), members)
            parts = (
                [out] if len(images) == 1 or out is None else split_features(out, [len(x) for x in images])
            )
            for member in members:
                found[id(member)] = parts[indices.index(self.stream_index(streams, member))]
        return found

    def step_members(
        self,
        members: list[Member],
        batch: Batch,
        teacher_out: Features | None,
        meters: dict[int, EpochMeter],
        epoch: int,
    ) -> None:
        """Step the members of one stream on this batch (the teacher's features computed for all of them)."""
        self.step_streams([members], (batch,), dict.fromkeys(map(id, members), teacher_out), meters, epoch)

    def step_streams(
        self,
        streams: list[list[Member]],
        batches: tuple[Batch, ...],
        teacher_outs: dict[int, Features | None],
        meters: dict[int, EpochMeter],
        epoch: int,
    ) -> None:
        """Step the streams' live members, each on its stream's batch: each fused group in one call,
        every other member alone."""
        for group in self.fused_groups:
            own = [batches[self.stream_index(streams, m)] for m in group.members]
            group.step(own, [teacher_outs[id(m)] for m in group.members], meters, epoch, guard)
        fused = {id(m) for group in self.fused_groups for m in group.members}
        for batch, stream in zip(batches, streams, strict=True):
            images, labels, indices = batch
            for member in [m for m in stream if m.error is None and id(m) not in fused]:
                meter, start = meters[id(member)], time.perf_counter()
                with guard(member):
                    where = f"epoch {epoch} step {meter.steps}"
                    meter.add(
                        *member.step(images, labels, indices, where, teacher_outs[id(member)]), len(labels)
                    )
                meter.seconds += time.perf_counter() - start

    def finish_epoch(self, member: Member, entry: dict) -> None:
        """Evaluate where the recipe says so, record the epoch, checkpoint it, print its line. The test
        pass's `evaluation` (kdbench/training/evaluation.py) rides in the latest evaluated epoch's entry,
        checkpointed with the history, until `train_result` makes it the record's own part."""
        recipe, epoch, spec = member.spec.recipe, entry["epoch"], member.spec
        evaluated = ""
        if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
            model = member.method.deploy(member.student)  # what is deployed is what is measured
            autocast = member.precision.autocast
            info = self.data.info
            # the teacher's test outputs: one pass per teacher and split, whatever the members and epochs
            taught = self.teacher is not None and spec.teacher is not None
            reference = teacher_outputs(self.teacher, self.data.test, info, self.device) if taught else None
            test = evaluate(model, self.data.test, info, self.device, autocast, teacher=reference)
            entry.update(test_top1=test["top1"], test_top5=test["top5"])
            for earlier in member.history:
                earlier.pop("evaluation", None)
            entry["evaluation"] = {"epoch": epoch, **test["evaluation"]}
            evaluated = f" test top-1 {test['top1']:.2f}%"
            if self.data.val is not None:
                entry["val_top1"] = evaluate(model, self.data.val, info, self.device, autocast)["top1"]
        member.history.append(entry)
        if self.on_epoch is not None:
            self.on_epoch(spec, entry)
        member.train_seconds += entry["epoch_seconds"]
        member.save_checkpoint(epoch)
        self.progress(
            f"[{spec.run_id}] {spec.label} epoch {epoch}/{recipe.epochs} "
            f"loss {entry['train_loss']:.4f}{evaluated} "
            f"({entry['epoch_seconds']:.1f}s, {entry['images'] / entry['epoch_seconds']:.0f} img/s)"
        )


class Trainer:
    """One spec trained alone: the loop over a cohort of one, whose failure is raised rather than
    recorded. Its other attributes are its member's (`student`, `method`, `generator`, `step`, ...)."""

    def __init__(self, spec: RunSpec, data: PreparedData, **options):
        self.cohort = Cohort([spec], data, **options)
        _raise_failure(self.cohort.runs[0])
        self.member = self.cohort.members[0]

    def __getattr__(self, name: str):
        if name == "member":  # asked before it exists: no member to ask
            raise AttributeError(name)
        return getattr(self.member, name)

    def prepare(self) -> None:
        """What the loop does before the first epoch: resume, measure costs, the init stage."""
        with guard(self.member):
            self.cohort.prepare_member(self.member)
        _raise_failure(self.member)

    def train_epoch(self, epoch: int) -> dict:
        """One epoch of the member: its history entry (not yet evaluated)."""
        entries = self.cohort.train_stream(epoch, [self.member])
        _raise_failure(self.member)
        return entries[0][1]

    def run(self) -> TrainResult:
        """Train to the end (resuming if a checkpoint exists): the measured result, with the deployed
        `final_state`."""
        (trained,) = self.cohort.run()
        _raise_failure(trained)
        return trained.result


def split_features(features: Features, sizes: list[int]) -> list[Features]:
    """`features` of concatenated batches, cut back into each batch's (`sizes`: their lengths)."""

    def cut(tensor):
        return [None] * len(sizes) if tensor is None else torch.split(tensor, sizes)

    fields = {name: cut(getattr(features, name)) for name in ("logits", "pooled", "stem")}
    stages = [cut(t) for t in features.stages]
    preact = [cut(t) for t in features.preact]
    return [
        Features(
            **{name: parts[i] for name, parts in fields.items()},
            stages=[parts[i] for parts in stages],
            preact=[parts[i] for parts in preact],
        )
        for i in range(len(sizes))
    ]


def _raise_failure(run: Member | Trained) -> None:
    if run.error is not None:
        raise run.error


def train(spec: RunSpec, data: PreparedData, **options) -> tuple[TrainResult, dict]:
    """Train one spec alone, to the end (resuming from its checkpoint): (measured result, deployed
    state_dict); a failure is raised. `options` are Cohort's keyword arguments (teacher, device, out, ...)."""
    result = Trainer(spec, data, **options).run()
    return result, result.pop("final_state")
