"""Cohort training: several runs over one data stream and one teacher forward.

Runs that share teacher, dataset, data subset, recipe and seed draw the same batches (the batch
order and the augmentation come from the seed alone), so a cohort draws each batch once, runs the
frozen teacher once on it (computing the union of the members' feature taps) and lets every member
take its step. Cohort training is an execution strategy, not a protocol change: each member keeps
its own global random stream (swapped in around everything it does) and its own generator, so its
record is bit-identical to the same spec trained alone (tests/test_cohort.py).

Members whose generators are in different states (an init stage drew batches of its own, or a
member resumed from another epoch) are trained as separate streams of the same cohort. A member
that fails (non-finite loss) is dropped with its error; the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdbench.core.spec import RunSpec
from kdbench.core.store import TrainResult
from kdbench.data import PreparedData
from kdbench.methods.base import PairNotSupportedError
from kdbench.training.engine import EpochMeter, NonFiniteLossError, Trainer, _forward

FAILURES = (NonFiniteLossError, PairNotSupportedError)


@dataclass
class Member:
    """One run of a cohort: its trainer and its own global random stream."""

    spec: RunSpec
    trainer: Trainer | None = None
    rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    error: Exception | None = None
    result: TrainResult | None = None
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this member's global random state in place, and keep what it leaves."""
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state()


class Cohort:
    """Train `specs` (one seed, one recipe, one teacher) in lockstep; `run()` returns per-member
    (result, final_state) or the member's error."""

    def __init__(
        self,
        specs: list[RunSpec],
        data: PreparedData,
        *,
        teacher: nn.Module | None,
        device: torch.device,
        out: Path,
        progress: Callable[[str], None] | None = None,
        on_epoch: Callable[[RunSpec, dict], None] | None = None,
    ):
        self.teacher, self.device = teacher, device
        self.members = [Member(spec) for spec in specs]
        for member in self.members:
            try:  # Trainer seeds the global stream with the spec's seed, as a solo run does
                member.trainer = Trainer(
                    member.spec,
                    data,
                    teacher=teacher,
                    device=device,
                    out=out,
                    progress=progress,
                    progress_bar=False,
                    on_epoch=on_epoch,
                )
            except FAILURES as err:
                member.error = err
            member.rng = torch.get_rng_state()
            member.cuda_rng = torch.cuda.get_rng_state() if device.type == "cuda" else None
        self.epochs = specs[0].recipe.epochs

    def live(self) -> list[Member]:
        return [m for m in self.members if m.error is None and m.result is None]

    @staticmethod
    @contextmanager
    def _guard(member: Member) -> Iterator[None]:
        """Run as `member` (its random stream); a failure of the member is kept, not raised."""
        try:
            with member.own_rng():
                yield
        except FAILURES as err:
            member.error = err

    def streams(self, epoch: int) -> list[list[Member]]:
        """The members training this epoch, grouped by identical generator state (one stream each)."""
        groups: dict[bytes, list[Member]] = {}
        for member in self.live():
            if member.trainer.start_epoch <= epoch:
                key = member.trainer.generator.get_state().numpy().tobytes()
                groups.setdefault(key, []).append(member)
        return list(groups.values())

    def _teacher_out(self, images: torch.Tensor, members: list[Member]):
        if self.teacher is None or not any(m.trainer.teacher is not None for m in members):
            return None
        fields = tuple(sorted({f for m in members for f in m.trainer.teacher_features}))
        leader = members[0].trainer  # members share precision and compile (the cohort key)
        with torch.no_grad(), leader.precision.autocast():
            return _forward(leader.train_teacher, images, fields)

    def train_stream(self, epoch: int, members: list[Member]) -> list[tuple[Member, dict]]:
        """One epoch of `members` over one stream, the batches and the teacher forward shared:
        each surviving member's history entry (not yet evaluated)."""
        for member in members:
            with self._guard(member):
                member.trainer.begin_epoch(epoch)
        meters = {id(m): EpochMeter() for m in members}
        leader = members[0].trainer
        shared_seconds, mark = 0.0, time.perf_counter()
        for images, labels, indices in leader.batches():
            teacher_out = self._teacher_out(images, members)
            shared_seconds += time.perf_counter() - mark  # drawing the batch + the teacher forward
            for member in [m for m in members if m.error is None]:
                meter, start = meters[id(member)], time.perf_counter()
                with self._guard(member):
                    where = f"epoch {epoch} step {meter.steps}"
                    meter.add(*member.trainer.step(images, labels, indices, where, teacher_out), len(labels))
                meter.seconds += time.perf_counter() - start
            mark = time.perf_counter()
        entries = []
        for member in [m for m in members if m.error is None]:
            # every member drew these batches: its generator ends where the leader's does
            member.trainer.generator.set_state(leader.generator.get_state())
            meter = meters[id(member)]
            meter.seconds += shared_seconds / len(members)  # the shared work, split evenly
            with self._guard(member):
                entries.append((member, member.trainer.close_epoch(epoch, meter)))
        return entries

    def run(self) -> list[Member]:
        for member in self.live():
            with self._guard(member):
                member.trainer.prepare()
        for epoch in range(1, self.epochs + 1):
            for members in self.streams(epoch):
                for member, entry in self.train_stream(epoch, members):
                    with self._guard(member):
                        member.trainer.finish_epoch(entry)
        for member in self.live():
            with self._guard(member):
                member.result = member.trainer.result()
                member.result["wall_seconds"] = time.perf_counter() - member.started
        return self.members


# A cohort holds every member's student, optimizer state, method modules (CRD's memory bank) and
# tracker files at once, while the teacher forward it shares is one share of each step: past a dozen
# or so members that share is small and the memory is not, so a group larger than this is cut.
MAX_COHORT_MEMBERS = 16


def plan_cohorts(
    specs: list[RunSpec], jobs: int, enabled: bool = True, largest: int = MAX_COHORT_MEMBERS
) -> list[list[RunSpec]]:
    """Specs that can share a data stream and a teacher forward (same student, dataset, recipe,
    seed, precision, compile), each group cut into cohorts of at most `largest` members, then into
    `parts` cohorts: the fewest parts that keep the `jobs` workers busiest (rounds of work per part:
    ceil(groups * parts / jobs) / parts)."""
    if not enabled:
        return [[spec] for spec in specs]
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        key = (spec.student, spec.dataset, spec.recipe, spec.seed, spec.precision, spec.compile)
        groups.setdefault(key, []).append(spec)
    bounded = []
    for group in groups.values():
        cuts = math.ceil(len(group) / largest)
        bounded += [group[i::cuts] for i in range(cuts)]
    if not bounded:
        return []
    most = max(len(group) for group in bounded)
    parts = min(range(1, most + 1), key=lambda p: (math.ceil(len(bounded) * p / jobs) / p, p))
    return [group[i::parts] for group in bounded for i in range(min(parts, len(group)))]
