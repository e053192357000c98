"""`kdbench bench`: speed ratios measured in one run on this machine (never asserted in tests).

- engine overhead: the one loop's epoch of a run alone (a cohort of one) vs a bare PyTorch loop
  (same model, data, steps);
- loader share: time to produce an epoch's augmented batches vs the bare training epoch;
- VAM training overhead: the same student with and without VAM;
- method step cost: each chosen method's epoch vs the student baseline's;
- cohort: the student and the chosen methods trained as one cohort (one data stream, one
  teacher forward) vs the same runs alone, one after another;
- fusion: M kd runs (temperatures 1, 2, 4, 8) trained as one fused group (`--fuse on`,
  kdbench/training/fused.py; in the style the engine chooses, and by vmap) vs the same cohort unfused,
  and M classic per-image DataLoader KD loops; the same M compiled, fused (one compiled grouped model,
  under CUDA graphs on CUDA) vs unfused;
  the two ways to fuse as bare CE steps (kdbench/devtools/fusion_styles.py: torch.func vmap, the
  engine's, and HFTA's grouped convolutions) vs the M students stepped one after another; on CUDA,
  the board of issue 24 (13 methods x 3 seeds x 240 epochs of 50,000 images) extrapolated in
  GPU-hours from the fused group's images/s and from one classic loop's;
- memory layout: the bare loop in NCHW vs channels-last (the engine's layout);
- local pool: two 1-thread training processes at once vs the same two one after another with
  every core's thread (what `kdbench run`'s default pool relies on; CPU only);
- one card, several cohorts: K processes each training the cohort at once on the one GPU vs
  one classic per-image DataLoader KD run (what a sweep with `--jobs K` gets; CUDA only).
Every row also has the images it trains (images x runs) and its throughput, images/s, so that
works of different sizes compare: `throughput_x` is its images/s over its reference's.
Each timing is the best of `repeats`, and the in-process measures are timed in turns (one epoch
of each, then again): a drift of the machine's speed during the run (seen on shared VMs: the same
loop 1.5 s, then 2.2 s) then hits every measure alike instead of skewing the ratios.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

import torch

from kdbench.core.environment import available_cores
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import MEMORY_FORMAT, PreparedData, iterate_batches, load_dataset
from kdbench.devtools.fusion_styles import fusion_steps
from kdbench.devtools.reference_loops import bare_epoch, bare_kd_epoch, classic_kd_epoch
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.training.engine import Cohort, Trainer
from kdbench.wrappers.vam import VAMConfig

# issue 24's board: 13 methods x 3 seeds x 240 epochs over CIFAR-100's 50,000 training images
BOARD_IMAGES = 13 * 3 * 240 * 50_000


def _synchronize(device: torch.device) -> None:
    """A GPU works asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds_in_turns(
    works: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Best seconds of each work over `repeats` rounds, each round timing every work once."""

    for work in works.values():
        work()  # warm-up, untimed: first-call allocations, kernel choices, compilation
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeats):
        for name, work in works.items():
            _synchronize(device)
            start = time.perf_counter()
            work()
            _synchronize(device)
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


def _seconds_in_processes(worker: Callable, args: tuple, workers: int) -> float:
    """The longest of the seconds that `workers` spawned processes of `worker(barrier, results,
    *args)` report, each timing its own work from the common start the barrier gives."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=worker, args=(barrier, results, *args)) for _ in range(workers)]
    for process in processes:
        process.start()
    seconds = max(results.get() for _ in processes)
    for process in processes:
        process.join()
    return seconds


def _pool_seconds(args: tuple, workers: int) -> float:
    """Wall seconds until `workers` spawned 1-thread processes have each trained `args` once."""
    return _seconds_in_processes(_pool_worker, args, workers)


def _cohort_worker(barrier, results, options: dict, members: tuple[str, ...]) -> None:
    torch.set_num_threads(1)  # as `kdbench run --jobs K` runs each (--threads 1): K processes share the cores
    setup = _Setup(**options)
    cohort = setup.cohort(members)
    cohort.train_stream(1, cohort.live())  # warm-up, untimed
    _synchronize(setup.device)
    barrier.wait()  # every process starts its timed epoch together
    start = time.perf_counter()
    cohort.train_stream(1, cohort.live())
    _synchronize(setup.device)
    results.put(time.perf_counter() - start)


def _concurrent_cohorts_seconds(options: dict, members: tuple[str, ...], workers: int) -> float:
    """Wall seconds until `workers` spawned processes have each trained one cohort epoch on the
    one card (timed from a common start, after each one's warm-up epoch)."""
    return _seconds_in_processes(_cohort_worker, (options, members), workers)


class _Setup:
    """The data, the teacher and the run specs every measure shares (also built in each process
    of the concurrent-cohorts measure, from the same options)."""

    def __init__(
        self, dataset, student, teacher, train_images, batch_size, data_root, out, device, dataset_options
    ):
        info, train, test = load_dataset(dataset, data_root, **(dataset_options or {}))
        self.host_train = train.take(torch.arange(min(train_images, len(train))))
        self.device = torch.device(device)
        self.info, self.out, self.student, self.teacher, self.dataset = info, out, student, teacher, dataset
        self.data = PreparedData(info, self.host_train, test, None).to(self.device)
        self.recipe = Recipe(epochs=1, batch_size=batch_size, lr_decay_epochs=())
        model = build_model(
            teacher, num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size
        )
        self.teacher_model = model.to(self.device, memory_format=MEMORY_FORMAT).eval().requires_grad_(False)

    def spec(
        self, method: str, vam: bool, precision: str = "fp32", compile: bool = False, hp: dict | None = None
    ) -> RunSpec:
        cls = method_class(method)
        return RunSpec(
            method=method,
            student=self.student,
            teacher=self.teacher if cls.needs_teacher else None,
            dataset=self.dataset,
            wrappers={"vam": VAMConfig()} if vam else {},
            hp=cls.resolve_hp(hp),
            recipe=self.recipe,
            precision=precision,
            compile=compile,
        )

    def trainer(self, method: str, vam: bool, **mode) -> Trainer:
        return Trainer(
            self.spec(method, vam, **mode),
            self.data,
            teacher=self.teacher_model if method_class(method).needs_teacher else None,
            device=self.device,
            out=self.out,
            progress=lambda line: None,
        )

    def cohort(self, members: tuple[str, ...]) -> Cohort:
        specs = [self.spec(m, False) for m in members]
        return Cohort(specs, self.data, teacher=self.teacher_model, device=self.device, out=self.out)

    def kd_cohort(
        self, temperatures: tuple[float, ...], fuse: bool, style: str | None = None, compile: bool = False
    ) -> Cohort:
        """kd at each temperature, one cohort (compiled where `compile`): the members of one fused group
        where `fuse` (in `style`, or the engine's choice)."""
        specs = [self.spec("kd", False, compile=compile, hp={"temperature": t}) for t in temperatures]
        options = dict(teacher=self.teacher_model, device=self.device, out=self.out)
        return Cohort(specs, self.data, fuse=fuse, fuse_style=style, **options)


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
    concurrent: tuple[int, ...] = (4, 8),
) -> list[dict]:
    """Return rows {measure, seconds, reference, runs, images, images_per_s, ratio, throughput_x};
    `concurrent`: the numbers of cohorts trained at once on one GPU (CUDA only)."""
    options = dict(
        dataset=dataset,
        student=student,
        teacher=teacher,
        train_images=train_images,
        batch_size=batch_size,
        data_root=data_root,
        out=out,
        device=device,
        dataset_options=dataset_options,
    )
    setup = _Setup(**options)
    info, train, device, teacher_model = setup.info, setup.data.train, setup.device, setup.teacher_model

    def batches():
        return iterate_batches(
            train, info, batch_size, shuffle=True, augment=True, device=device, generator=torch.Generator()
        )

    prepared = list(batches())
    bare_args = (student, prepared, info.num_classes, info.in_chans)
    bare, engine = "bare PyTorch loop, channels-last (reference)", "engine: student baseline epoch"

    def epoch_of(method: str, vam: bool, **mode) -> Callable[[], dict]:
        method_trainer = setup.trainer(method, vam, **mode)
        return lambda: method_trainer.train_epoch(1)

    members = ("student", *methods)
    alone = [epoch_of(method, vam=False) for method in members]
    cohort = setup.cohort(members)
    together, apart = f"cohort: {', '.join(members)} in one epoch", "the same runs alone, one after another"
    kd_args = (student, teacher_model, prepared, info.num_classes, info.in_chans)
    bare_kd, engine_kd = "bare fp32 KD loop (reference)", "engine: kd epoch, fp32"

    temperatures = (1.0, 2.0, 4.0, 8.0)
    unfused, fused = setup.kd_cohort(temperatures, fuse=False), setup.kd_cohort(temperatures, fuse=True)
    vmapped = setup.kd_cohort(temperatures, fuse=True, style="vmap")
    unfused_name = f"fusion: {len(temperatures)} kd runs, one cohort unfused"
    fused_name = f"fusion: the same {len(temperatures)} as one fused group (--fuse on)"
    vmapped_name = f"fusion: the same {len(temperatures)} fused by torch.func vmap"
    compiled = [setup.kd_cohort(temperatures, fuse=fuse, compile=True) for fuse in (False, True)]
    compiled_name = f"fusion: {len(temperatures)} kd runs compiled, one cohort unfused"
    graphs = " (CUDA graphs)" if setup.device.type == "cuda" else ""
    compiled_fused_name = f"fusion: the same {len(temperatures)} compiled as one fused group{graphs}"

    classic = "classic: per-image DataLoader KD loop"
    classics = [
        classic_kd_epoch(student, teacher_model, setup.host_train, info, batch_size) for _ in temperatures
    ]
    classic_group = f"fusion: {len(temperatures)} classic per-image DataLoader KD loops"
    measures = [  # (name, work, name of its reference, runs the work trains)
        (bare, bare_epoch(*bare_args, MEMORY_FORMAT), bare, 1),
        ("layout: the bare loop in NCHW", bare_epoch(*bare_args, torch.contiguous_format), bare, 1),
        ("loader: augmented batches only", lambda: sum(1 for _ in batches()), bare, 1),
        (engine, epoch_of("student", vam=False), bare, 1),
        ("VAM: student +VAM epoch", epoch_of("student", vam=True), engine, 1),
        *((f"method: {method} epoch", epoch_of(method, vam=False), engine, 1) for method in methods),
        (apart, lambda: [epoch() for epoch in alone], apart, len(members)),
        (together, lambda: cohort.train_stream(1, cohort.live()), apart, len(members)),
        (unfused_name, lambda: unfused.train_stream(1, unfused.live()), unfused_name, len(temperatures)),
        (fused_name, lambda: fused.train_stream(1, fused.live()), unfused_name, len(temperatures)),
        (vmapped_name, lambda: vmapped.train_stream(1, vmapped.live()), unfused_name, len(temperatures)),
        *(
            (name, lambda c=c: c.train_stream(1, c.live()), compiled_name, len(temperatures))
            for name, c in zip((compiled_name, compiled_fused_name), compiled, strict=True)
        ),
        (classic_group, lambda: [epoch() for epoch in classics], unfused_name, len(temperatures)),
        *_fusion_style_measures(bare_args, len(temperatures)),
        (bare_kd, bare_kd_epoch(*kd_args), bare_kd, 1),
        (engine_kd, epoch_of("kd", vam=False), bare_kd, 1),
        (classic, classic_kd_epoch(student, teacher_model, setup.host_train, info, batch_size), engine_kd, 1),
        ("precision: kd epoch, bf16 autocast", epoch_of("kd", vam=False, precision="bf16"), engine_kd, 1),
        ("compile: kd epoch, torch.compile", epoch_of("kd", vam=False, compile=True), engine_kd, 1),
    ]
    seconds = _best_seconds_in_turns({name: work for name, work, *_ in measures}, repeats, device)
    rows = [
        {"measure": name, "seconds": seconds[name], "reference": reference, "runs": runs}
        for name, _, reference, runs in measures
    ]
    cores = available_cores()
    if cores > 1 and device.type == "cpu":
        one_after_another = pooled = float("inf")
        for _ in range(repeats):  # in turns, as above
            one_after_another = min(one_after_another, 2 * _training_seconds(*bare_args, threads=cores))
            pooled = min(pooled, _pool_seconds((*bare_args, 1), workers=2))
        after = f"2 runs one after another x {cores} threads"
        rows.append({"measure": after, "seconds": one_after_another, "reference": after, "runs": 2})
        rows.append(
            {"measure": "pool: 2 runs at once x 1 thread", "seconds": pooled, "reference": after, "runs": 2}
        )
    if device.type == "cuda":
        for workers in concurrent:
            rows.append(
                {
                    "measure": f"card: {workers} cohorts at once ({workers} processes)",
                    "seconds": _concurrent_cohorts_seconds(options, members, workers),
                    "reference": classic,
                    "runs": workers * len(members),
                }
            )
    rows = _with_throughput(rows, images=len(train))
    if device.type == "cuda":
        rows += _board_rows(rows, classic, fused_name, compiled_fused_name)
    return rows


def _fusion_style_measures(bare_args: tuple, members: int) -> list[tuple]:
    """The bare CE steps of M students: one after another, vmap-fused, HFTA-fused (the last left out for
    a student HFTA's grouping does not cover)."""
    works = fusion_steps(*bare_args, members, MEMORY_FORMAT)
    reference = f"fusion, bare CE steps: {members} students one after another"
    names = {"one after another": reference, "vmap": "fusion, bare CE steps: torch.func vmap"}
    names["hfta"] = "fusion, bare CE steps: HFTA grouped convolutions (the engine's where they cover it)"
    return [(names[key], work, reference, members) for key, work in works.items()]


def _board_rows(rows: list[dict], classic: str, *fused: str) -> list[dict]:
    """Issue 24's board (BOARD_IMAGES) extrapolated from a classic loop's images/s and each fused row's."""
    by_name = {row["measure"]: row for row in rows}
    board = []
    for name in (classic, *fused):
        speed = by_name[name]["images_per_s"]
        hours = BOARD_IMAGES / speed / 3600
        board.append(
            {"measure": f"board: 13 methods x 3 seeds x 240 epochs at {name}'s speed: {hours:.1f} GPU-hours"}
            | {"seconds": hours * 3600, "runs": 13 * 3, "images": BOARD_IMAGES, "images_per_s": speed}
            | {"gpu_hours": hours}
        )
    for row in board:
        row["reference"] = board[0]["measure"]
        row["ratio"] = row["seconds"] / board[0]["seconds"]
        row["throughput_x"] = row["images_per_s"] / board[0]["images_per_s"]
    return board


def _with_throughput(rows: list[dict], images: int) -> list[dict]:
    """Each row's ratio to its reference row: seconds (same work) and images/s (any work)."""
    by_name = {row["measure"]: row for row in rows}
    for row in rows:
        row["images"] = images * row["runs"]
        row["images_per_s"] = row["images"] / row["seconds"]
    for row in rows:
        reference = by_name[row["reference"]]
        row["ratio"] = row["seconds"] / reference["seconds"]
        row["throughput_x"] = row["images_per_s"] / reference["images_per_s"]
    return rows
