"""Training time relative to the plain student baseline: a timed probe of the run's own step.

Before its first epoch, a distillation run times its own training step (the teacher forward, the
student forward and the method's loss, the backward, the optimizer step) against the step of its
student baseline (`baseline_spec`: the same student architecture, recipe, precision and device; cross
entropy only, no wrapper) on one batch, in its own process, in turns after a warm-up (`step_clock`:
synchronized wall seconds on CUDA, the process's CPU seconds on CPU; `timed_pairs`: 2 to 8 pairs,
half the run's own steps). The ratio of their median
seconds is the record's `overhead.time_ratio_vs_student`; `overhead.time_probe` says how it was
measured and how much the per-pair ratios spread. Both steps run on twins, members built afresh
from the two specs under a forked random stream, so the run's modules, optimizer and every random
stream stay as they were. Unlike a quotient of two runs' epoch seconds, the probe does not depend on
how a sweep was scheduled: a run alone, a cohort member (whose epoch shares the loop with other
members), a fused group, a pool of workers all time the same two steps side by side.

A run whose spec is its own baseline (the plain student) has the ratio 1 by definition and no probe;
a teacher run has none.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from kdbench.core.spec import RunSpec
from kdbench.methods.base import BASELINE_METHOD, method_class
from kdbench.training.member import Member

WARMUP_STEPS = 1  # of each step before timing: allocations, momentum buffers, lazy modules, compilation
# timed (method step, student step) pairs, the order of the two alternating: half the run's own steps
# within these bounds, so that the probe never costs a smoke run more than its training does
MIN_TIMED_PAIRS, MAX_TIMED_PAIRS = 2, 8


def timed_pairs(spec: RunSpec, train_images: int) -> int:
    """How many pairs the probe of `spec`, training on `train_images` images, times."""
    run_steps = spec.recipe.epochs * math.ceil(train_images / spec.recipe.batch_size)
    return min(MAX_TIMED_PAIRS, max(MIN_TIMED_PAIRS, run_steps // 2))


def baseline_spec(spec: RunSpec) -> RunSpec:
    """The student-only run a distillation run is compared with."""
    return replace(
        spec,
        method=BASELINE_METHOD,
        teacher=None,
        teacher_sha256=None,
        wrappers={},
        hp=method_class(BASELINE_METHOD).resolve_hp(),
    )


def _twin(member: Member, spec: RunSpec) -> Member:
    """A member of `spec` built afresh beside `member` (its data, teacher, device and store), whose
    optimizer moves nothing: every timed step computes the same thing, and none can diverge."""
    with warnings.catch_warnings():  # what building the spec warns of, the run's own member said
        warnings.simplefilter("ignore")
        twin = Member(
            spec,
            member.data,
            teacher=member.teacher if spec.teacher else None,
            device=member.device,
            out=member.out,
            progress=member.progress,
        )
    for group in twin.optimizer.param_groups:
        group["lr"] = 0.0
    twin.begin_epoch(1)
    return twin


def step_clock(device: torch.device) -> tuple[str, Callable[[Callable[[], object]], float]]:
    """How a step is timed on `device`: (its name, a function of the step giving its seconds). On
    CUDA, wall seconds between synchronizations; on CPU, the process's CPU seconds, which other
    processes sharing the machine's cores do not inflate as they inflate wall seconds."""
    if device.type == "cuda":

        def synchronized_wall(step: Callable[[], object]) -> float:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            torch.cuda.synchronize(device)
            return time.perf_counter() - start

        return "cuda_synchronized_wall", synchronized_wall

    def process_cpu(step: Callable[[], object]) -> float:
        start = time.process_time()
        step()
        return time.process_time() - start

    return "process_cpu", process_cpu


def interleaved_ratio(
    method_step: Callable[[], object],
    student_step: Callable[[], object],
    device: torch.device,
    pairs: int,
    warmup: int = WARMUP_STEPS,
) -> dict:
    """Time the two steps in turns (A B, B A, A B, ...) after `warmup` untimed steps of each: the ratio
    of their median seconds (robust to a step a burst of other work slowed, and of the estimators
    tried the least spread between repeated probes: README, "Costs"), the quartiles of the per-pair
    ratios A / B (the probe's noise), each step's median seconds and the clock that timed them."""
    clock_name, timed = step_clock(device)
    for _ in range(warmup):
        method_step()
        student_step()
    pair_ratios, method_seconds, student_seconds = [], [], []
    for index in range(pairs):
        if index % 2 == 0:
            a, b = timed(method_step), timed(student_step)
        else:
            b, a = timed(student_step), timed(method_step)
        pair_ratios.append(a / b)
        method_seconds.append(a)
        student_seconds.append(b)
    quartiles = statistics.quantiles(pair_ratios, n=4, method="inclusive")
    step_seconds, student_step_seconds = statistics.median(method_seconds), statistics.median(student_seconds)
    return {
        "ratio": step_seconds / student_step_seconds,
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "pairs": pairs,
        "warmup_steps": warmup,
        "step_seconds": step_seconds,
        "student_step_seconds": student_step_seconds,
        "clock": clock_name,
    }


def probe_time_ratio(
    member: Member, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], enabled: bool = True
) -> dict:
    """`time_ratio_vs_student` of `member` and, where measured, its `time_probe` (the probe's
    figures, its own wall seconds included), timed on `batch`; neither for a teacher, nor where the
    probe is not `enabled` (`--time-probe off`: no ratio rather than one from another schedule)."""
    spec = member.spec
    if spec.kind == "teacher" or not enabled:
        return {"time_ratio_vs_student": None, "time_probe": None}
    baseline = baseline_spec(spec)
    if baseline == spec:
        return {"time_ratio_vs_student": 1.0, "time_probe": None}
    started = time.perf_counter()
    devices = [member.device] if member.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        distilled, plain = _twin(member, spec), _twin(member, baseline)
        probe = interleaved_ratio(
            lambda: distilled.step(*batch, "the cost probe"),
            lambda: plain.step(*batch, "the cost probe"),
            member.device,
            timed_pairs(spec, len(member.data.train.labels)),
        )
    probe["seconds"] = time.perf_counter() - started
    return {"time_ratio_vs_student": probe.pop("ratio"), "time_probe": probe}
