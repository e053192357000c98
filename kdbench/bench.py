"""`kdbench bench`: speed ratios measured in one run on this machine (never asserted in tests).

- engine overhead: the shared Trainer's epoch vs a bare PyTorch loop (same model, data, steps);
- loader share: time to produce an epoch's augmented batches vs the bare training epoch;
- VAM training overhead: the same student with and without VAM;
- method step cost: each chosen method's epoch vs the student baseline's;
- cohort: the student and the chosen methods trained as one cohort (one data stream, one
  teacher forward) vs the same runs alone, one after another;
- memory layout: the bare loop in NCHW vs channels-last (the engine's layout);
- local pool: two 1-thread training processes at once vs the same two one after another with
  every core's thread (what `kdbench run`'s default pool relies on; CPU only).
Each timing is the best of `repeats`, and the in-process measures are timed in turns (one epoch
of each, then again): a drift of the machine's speed during the run (seen on shared VMs: the same
loop 1.5 s, then 2.2 s) then hits every measure alike instead of skewing the ratios.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

import torch

from kdbench.cohort import Cohort
from kdbench.data import MEMORY_FORMAT, PreparedData, iterate_batches, load_dataset
from kdbench.engine import Trainer
from kdbench.environment import available_cores
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.reference_loops import bare_epoch, bare_kd_epoch, classic_kd_epoch
from kdbench.spec import Recipe, RunSpec, VAMConfig


def _best_seconds_in_turns(
    works: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Best seconds of each work over `repeats` rounds, each round timing every work once."""

    def synchronize():  # a GPU works asynchronously: wait for it before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for work in works.values():
        work()  # warm-up, untimed: first-call allocations, kernel choices, compilation
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeats):
        for name, work in works.items():
            synchronize()
            start = time.perf_counter()
            work()
            synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _training_seconds(student: str, batches: list, num_classes: int, in_chans: int, threads: int) -> float:
    """Seconds of one bare epoch over `batches` with `threads` torch threads (after a warm-up epoch)."""
    torch.set_num_threads(threads)
    epoch = bare_epoch(student, batches, num_classes, in_chans, MEMORY_FORMAT)
    epoch()  # warm-up, untimed: first-call allocations and a kernel choice per batch shape
    start = time.perf_counter()
    epoch()
    return time.perf_counter() - start


def _pool_worker(barrier, results, *args) -> None:
    barrier.wait()  # both workers start their timed loops together
    results.put(_training_seconds(*args))


def _pool_seconds(args: tuple, workers: int) -> float:
    """Wall seconds until `workers` spawned 1-thread processes have each trained `args` once."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_pool_worker, args=(barrier, results, *args)) for _ in range(workers)]
    for process in processes:
        process.start()
    seconds = max(results.get() for _ in processes)
    for process in processes:
        process.join()
    return seconds


def run_bench(
    dataset: str = "synthetic",
    student: str = "resnet8",
    teacher: str = "resnet20",
    methods: tuple[str, ...] = ("kd", "crd"),
    train_images: int = 2048,
    batch_size: int = 128,
    repeats: int = 3,
    data_root: str | None = None,
    out: str = "/tmp/kdbench-bench",
    device: str = "cpu",
    dataset_options: dict | None = None,
) -> list[dict]:
    """Return rows {measure, seconds, reference_seconds, ratio}."""
    info, train, test = load_dataset(dataset, data_root, **(dataset_options or {}))
    train = train.take(torch.arange(min(train_images, len(train))))
    device = torch.device(device)
    host_train = train  # the classic loop augments on the host, one image at a time
    data = PreparedData(info, train, test, None).to(device)
    train = data.train
    recipe = Recipe(epochs=1, batch_size=batch_size, lr_decay_epochs=())
    teacher_model = build_model(teacher, num_classes=info.num_classes, in_chans=info.in_chans)
    teacher_model = teacher_model.to(device, memory_format=MEMORY_FORMAT).eval().requires_grad_(False)

    def spec_of(method: str, vam: bool, precision: str = "fp32", compile: bool = False) -> RunSpec:
        cls = method_class(method)
        return RunSpec(
            method=method,
            student=student,
            teacher=teacher if cls.needs_teacher else None,
            dataset=dataset,
            vam=VAMConfig() if vam else None,
            hp=cls.resolve_hp(),
            recipe=recipe,
            precision=precision,
            compile=compile,
        )

    def trainer(method: str, vam: bool, **mode) -> Trainer:
        return Trainer(
            spec_of(method, vam, **mode),
            data,
            teacher=teacher_model if method_class(method).needs_teacher else None,
            device=device,
            out=out,
            progress=lambda line: None,
        )

    def batches():
        return iterate_batches(
            train, info, batch_size, shuffle=True, augment=True, device=device, generator=torch.Generator()
        )

    prepared = list(batches())
    bare_args = (student, prepared, info.num_classes, info.in_chans)
    bare, engine = "bare PyTorch loop, channels-last (reference)", "engine: student baseline epoch"

    def epoch_of(method: str, vam: bool, **mode) -> Callable[[], dict]:
        method_trainer = trainer(method, vam, **mode)
        return lambda: method_trainer.train_epoch(1)

    members = ("student", *methods)
    alone = [epoch_of(method, vam=False) for method in members]
    cohort = Cohort([spec_of(m, False) for m in members], data, teacher=teacher_model, device=device, out=out)
    together, apart = f"cohort: {', '.join(members)} in one epoch", "the same runs alone, one after another"
    kd_args = (student, teacher_model, prepared, info.num_classes, info.in_chans)
    bare_kd, engine_kd = "bare fp32 KD loop (reference)", "engine: kd epoch, fp32"

    measures = [  # (name, work, name of its reference)
        (bare, bare_epoch(*bare_args, MEMORY_FORMAT), bare),
        ("layout: the bare loop in NCHW", bare_epoch(*bare_args, torch.contiguous_format), bare),
        ("loader: augmented batches only", lambda: sum(1 for _ in batches()), bare),
        (engine, epoch_of("student", vam=False), bare),
        ("VAM: student +VAM epoch", epoch_of("student", vam=True), engine),
        *((f"method: {method} epoch", epoch_of(method, vam=False), engine) for method in methods),
        (apart, lambda: [epoch() for epoch in alone], apart),
        (together, lambda: cohort.train_stream(1, cohort.live()), apart),
        (bare_kd, bare_kd_epoch(*kd_args), bare_kd),
        (engine_kd, epoch_of("kd", vam=False), bare_kd),
        (
            "classic: per-image DataLoader KD loop",
            classic_kd_epoch(student, teacher_model, host_train, info, batch_size),
            engine_kd,
        ),
        ("precision: kd epoch, bf16 autocast", epoch_of("kd", vam=False, precision="bf16"), engine_kd),
        ("compile: kd epoch, torch.compile", epoch_of("kd", vam=False, compile=True), engine_kd),
    ]
    seconds = _best_seconds_in_turns({name: work for name, work, _ in measures}, repeats, device)
    rows = [
        {"measure": name, "seconds": seconds[name], "reference_seconds": seconds[reference]}
        for name, _, reference in measures
    ]
    cores = available_cores()
    if cores > 1 and device.type == "cpu":
        one_after_another = pooled = float("inf")
        for _ in range(repeats):  # in turns, as above
            one_after_another = min(one_after_another, 2 * _training_seconds(*bare_args, threads=cores))
            pooled = min(pooled, _pool_seconds((*bare_args, 1), workers=2))
        rows.append(
            {
                "measure": f"pool: 2 runs at once x 1 thread (reference: one after another x {cores})",
                "seconds": pooled,
                "reference_seconds": one_after_another,
            }
        )
    for row in rows:
        row["ratio"] = row["seconds"] / row["reference_seconds"]
    return rows
