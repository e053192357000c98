"""Command line: parses flags, builds a sweep request from a preset + overrides, calls the library.

kdbench run [--preset quick] [--methods kd,crd] [--pairs t:s,...] [--vam on|off|both] ...
kdbench report [--out DIR] [--format terminal|markdown|csv|latex|html] [--plot DIR]
kdbench check --baseline FILE [--out DIR]
kdbench list methods|models|datasets|pairs|presets
kdbench teacher train NAME --dataset D
kdbench explain --teacher NAME|PATH [--dataset D] [--seeds N] [--epochs E] [--out DIR]
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

from kdbench.core.errors import ConfigError, KdbenchError, file_problem

DEFAULT_OUT = "kdbench-results"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`kdbench: error: argument --epochs: ...`), exit 2."""

    def error(self, message: str):
        self.exit(2, f"kdbench: error: {message}\n")


def _whole(low: int):
    """argparse type: a whole number >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _cohort(text: str) -> bool | int:
    """argparse type of --cohort: on, off, or the most runs a cohort holds."""
    return {"on": True, "off": False}.get(text) if text in ("on", "off") else _whole(1)(text)


def _whole_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated whole numbers >= 1 (`4,8`)."""
    return tuple(_whole(1)(part) for part in text.split(",") if part)


def _number(above: float | None = None, low: float | None = None, below: float | None = None):
    """argparse type: a finite number in range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
        if not (
            math.isfinite(value)
            and (above is None or value > above)
            and (low is None or value >= low)
            and (below is None or value < below)
        ):
            bounds = [f"> {above}" if above is not None else "", f">= {low}" if low is not None else ""]
            bounds += [f"< {below}" if below is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value

    return parse


def _device(text: str) -> str:
    """argparse type: a torch device that exists on this machine."""
    if text == "cpu":
        return text
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise argparse.ArgumentTypeError(
            f"{text}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help="results store folder (default: %(default)s)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="sweep file: the keys of a preset, lists in hp and vam_config are grids; flags override it. "
        "YAML and JSON are read as data; a Python (.py) sweep file is RUN as code, with your rights: "
        "pass only one you trust",
    )
    parser.add_argument(
        "--preset",
        help="preset filling what the flags and the sweep file leave out (default: the file's, else quick)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="a Python file registering methods, models or datasets (repeatable; also custom_imports)",
    )
    parser.add_argument("--methods", help="comma list of method names, or 'all'")
    parser.add_argument(
        "--log",
        metavar="TRACKERS",
        help="per-epoch scalars to trackers, comma list: tensorboard, mlflow, wandb, aim "
        "(under STORE/trackers; each needs its package); every run also logs to STORE/logs/<run_id>.txt",
    )
    parser.add_argument(
        "--pairs", help="teacher:student[,teacher:student...] or a pair group (quick, repdistiller)"
    )
    parser.add_argument("--dataset", help="dataset name (kdbench list datasets)")
    parser.add_argument(
        "--data-root", help="dataset folder (default: $KDBENCH_DATA, then the system locations)"
    )
    parser.add_argument("--seeds", type=_whole(1), help="number of seeds (0..N-1)")
    parser.add_argument("--epochs", type=_whole(1), help="student epochs (lr decay points scale with it)")
    _add_teacher_recipe_flags(parser)
    parser.add_argument("--batch-size", type=_whole(1), help="student batch size (default: the preset's)")
    parser.add_argument("--lr", type=_number(above=0), help="student learning rate (default: the preset's)")
    parser.add_argument(
        "--val-split", type=_number(low=0, below=1), help="hold out this fraction of train as validation"
    )
    parser.add_argument("--vam", choices=("on", "off", "both"), help="wrap the student with VAM")
    parser.add_argument("--vam-groups", type=_whole(1), help="VAM virtual blocks per conv (default 4)")
    parser.add_argument(
        "--vam-lr-scale", type=_number(above=0), help="lr of VAM's attention logits / recipe lr"
    )
    parser.add_argument(
        "--vam-last-stages", type=_whole(1), help="wrap the convolutions of the last N stages (default 1)"
    )
    parser.add_argument(
        "--vam-entropy-weight",
        type=_number(low=0),
        help="gamma of VAM's attention-entropy loss (default 0.01)",
    )
    parser.add_argument(
        "--teacher", help="teacher checkpoint path ({'model': state_dict}); default: train + cache"
    )
    parser.add_argument(
        "--student-init",
        metavar="PATH",
        help="start every student from these weights (kdbench, RepDistiller, mdistiller or timm checkpoint); "
        "its SHA-256 is part of each spec",
    )
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a method hyper-parameter, e.g. kd.temperature=2 (repeatable); several values "
        "are a grid, e.g. kd.temperature=2,4",
    )
    parser.add_argument("--device", type=_device, default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--force", action="store_true", help="re-run specs that already have a record")
    parser.add_argument(
        "--cohort",
        type=_cohort,
        metavar="on|off|N",
        help="train runs sharing a seed and recipe in lockstep: one data pass, one teacher forward, in "
        "cohorts of at most 16 runs (N: at most N; each member's model and optimizer are held at once); "
        "default on; records are bit-identical either way",
    )
    parser.add_argument(
        "--max-runs",
        type=_whole(1),
        metavar="N",
        help="refuse a sweep that plans more than N runs (default 10000; counted before any is built)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="student runs' precision: autocast bf16 / fp16 (with a gradient scaler) or fp32 "
        "(default: the preset's, else fp32); recorded in every spec",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the student's and teacher's training forward"
    )
    parser.add_argument(
        "--image-size",
        type=_whole(1),
        help="image side to train at (image folders; default: declared for the dataset, else the first image's)",
    )
    parser.add_argument(
        "--loader",
        choices=("memory", "stream", "auto"),
        help="decode the dataset into memory, stream it from disk with DataLoader workers, or auto "
        "(default: stream when the decoded data would take over half the available memory)",
    )
    parser.add_argument(
        "--workers", type=_whole(0), help="DataLoader workers of a streamed dataset (sets KDBENCH_WORKERS)"
    )
    _add_parallel_flags(parser)
    _add_common(parser)


def _add_teacher_recipe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-epochs", type=_whole(1), help="epochs of a teacher trained by kdbench")
    parser.add_argument(
        "--train-subset", type=_whole(0), help="train on a stratified subset of N images (0: all)"
    )


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_whole(1),
        default=1,
        help="torch threads per run on CPU (default 1); a spec reproduces exactly at the same --threads",
    )
    parser.add_argument(
        "--jobs",
        type=_whole(1),
        help="runs trained at once, one process each (default: CPU cores / --threads; 1 on a GPU)",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "ray", "slurm", "submitit-local"],
        default="local",
        help="where runs train: local (this process, or a pool with --jobs > 1), ray, slurm (via "
        "submitit), submitit-local (submitit's jobs on this machine); off local, --out must be a "
        "folder every node sees",
    )
    parser.add_argument(
        "--ray-address",
        help="join this Ray cluster (auto, or HOST:PORT; default: start a local Ray); an address that "
        "accepts no connection within 30 s is refused",
    )
    parser.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    parser.add_argument(
        "--slurm-gpus-per-task", type=_whole(0), help="GPUs per SLURM job (default: 1 on cuda, else 0)"
    )
    parser.add_argument(
        "--slurm-time",
        type=_whole(1),
        help="time limit of a SLURM job in minutes (default 240); a run that outlasts it resumes in a requeued job",
    )
    parser.add_argument(
        "--slurm-array-parallelism",
        type=_whole(1),
        help="SLURM jobs running at once (default: submitit's cap of 256 per job array)",
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every flag's default shown where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, False, [], argparse.SUPPRESS):
            return help_text
        return f"{help_text} (default: %(default)s)"


EXAMPLES = {
    "run": """examples:
  kdbench run --methods kd,crd --vam on                  # the quick preset's pair and dataset
  kdbench run --preset paper --methods crd+kd,dkd        # RepDistiller's CIFAR-100 recipe, 13 pairs
  kdbench run --config sweep.yaml --seeds 5              # a sweep file; flags override it
  kdbench run --hp kd.temperature=2,4 --methods kd       # a grid: two kd configurations
  kdbench run --plugin my_method.py --methods my_method  # your own method
""",
    "report": """examples:
  kdbench report --format markdown
  kdbench report --format html > board.html              # one self-contained page
  kdbench report --format latex --no-published --plot plots/
""",
    "rerun": """examples:
  kdbench rerun kdbench-results/runs/5b72a9149be4.json   # exit 0: the same numbers, bit for bit
""",
    "check": """examples:
  kdbench check --baseline results/baselines/ci.json --out STORE
  kdbench check --baseline new.json --write-baseline --out STORE
""",
    "list": """examples:
  kdbench list methods --verbose                         # hyper-parameters, defaults, citations
  kdbench list presets
""",
    "teacher": """examples:
  kdbench teacher train resnet56 --dataset fashion-mnist --teacher-epochs 30
""",
    "bench": """examples:
  kdbench bench --dataset fashion-mnist --batch-size 64
""",
    "pins": """examples:
  kdbench pins            # exit 1 when a method's first training steps changed
  kdbench pins --write    # after adding a method
""",
    "explain": """examples:
  kdbench explain --teacher resnet20 --dataset fashion-mnist
""",
}


def _preset_table() -> str:
    """The presets' values, for `kdbench run --help`: what an unset flag becomes."""
    from kdbench.core.catalog import presets
    from kdbench.execution.config import RUN_DEFAULTS

    lines = ["preset values (a flag or a sweep file key overrides them):"]
    for name, body in presets().items():
        recipe, teacher_recipe = body["recipe"], body["teacher_recipe"]
        methods = body["methods"] if isinstance(body["methods"], str) else ",".join(body["methods"])
        pairs = body["pairs"] if isinstance(body["pairs"], str) else ",".join(body["pairs"])
        lines.append(
            f"  {name}: --dataset {body['dataset']} --pairs {pairs} --methods {methods} --vam {body['vam']} "
            f"--seeds {body['seeds']} --epochs {recipe['epochs']} --batch-size {recipe['batch_size']} "
            f"--lr {recipe['lr']} --train-subset {recipe.get('train_subset') or 0} "
            f"--teacher-epochs {teacher_recipe['epochs']}"
        )
    shown = {key: ("on" if value is True else value) for key, value in RUN_DEFAULTS.items()}
    lines.append("under every preset: " + ", ".join(f"--{key} {value}" for key, value in shown.items()))
    return "\n".join(lines) + "\n"


def _command(commands, name: str, help_text: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=help_text, epilog=epilog or EXAMPLES.get(name), formatter_class=_HelpFormatter
    )


def build_parser() -> argparse.ArgumentParser:
    from kdbench import __version__

    parser = _Parser(prog="kdbench", description="Knowledge-distillation benchmark and leaderboard.")
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = _command(
        commands,
        "run",
        "train a grid of methods x pairs x seeds x VAM, then print the board",
        EXAMPLES["run"] + "\n" + _preset_table(),
    )
    _add_run_flags(run)
    run.add_argument(
        "--format",
        default="terminal",
        choices=("terminal", "markdown", "csv", "latex", "html", "json"),
        help="leaderboard format printed at the end",
    )
    # unset flags stay None so a sweep file's values show through (RUN_DEFAULTS fill in last)
    run.set_defaults(device=None, cohort=None, threads=None, backend=None, out=None)

    rerun = _command(
        commands, "rerun", "train one record's run again from the record alone and compare the numbers"
    )
    rerun.add_argument("record", help="a run record, STORE/runs/<run_id>.json")
    rerun.add_argument("--out", help="store of the new record (default: STORE/reruns/<run_id>)")
    rerun.add_argument("--teacher", help="the teacher checkpoint (default: found by SHA-256 in the store)")
    rerun.add_argument(
        "--student-init",
        metavar="PATH",
        help="the run's --student-init checkpoint (default: the store's copy, found by SHA-256)",
    )
    rerun.add_argument(
        "--data-root", help="dataset folder (default: $KDBENCH_DATA, then the system locations)"
    )
    rerun.add_argument("--device", type=_device, default="cpu", help="torch device (cpu, cuda, cuda:1)")
    rerun.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="a plugin the run used, in the version it used (default: its copy in STORE/plugins)",
    )

    report = _command(commands, "report", "leaderboard from the records of a store")
    _add_common(report)
    report.add_argument(
        "--format",
        default="terminal",
        choices=("terminal", "markdown", "csv", "latex", "html", "json"),
        help="table format; html is one self-contained page, csv and json are tidy data",
    )
    report.add_argument("--dataset", help="dataset to tabulate (default: the one with most runs)")
    report.add_argument(
        "--plot", metavar="DIR", help="also write accuracy-vs-overhead and learning-curve PNGs"
    )
    report.add_argument("--no-published", action="store_true", help="omit the published reference rows")
    report.add_argument(
        "--vam-entropy", action="store_true", help="also print the VAM attention-entropy table"
    )

    check = _command(commands, "check", "CI: non-zero exit when a result regresses below a baseline")
    _add_common(check)
    check.add_argument(
        "--baseline", required=True, help="baseline JSON (kdbench check --write-baseline makes one)"
    )
    check.add_argument(
        "--write-baseline", action="store_true", help="write the baseline from the store instead"
    )
    check.add_argument(
        "--pins",
        metavar="FILE",
        help="the gate's fast tier: every method's first training steps against these pinned losses, "
        "naming the method whose math changed (default: results/baselines/step-losses.json)",
    )
    check.add_argument("--no-pins", action="store_true", help="skip the pinned-loss tier")
    check.add_argument(
        "--alpha",
        type=_number(above=0, below=1),
        help="one-sided Welch test level (default: the baseline's, 0.01)",
    )
    check.add_argument(
        "--floor",
        type=_number(low=0),
        help="points a cell may drop where too few seeds allow a test (default 1)",
    )

    listing = _command(commands, "list", "list registered names")
    listing.add_argument("what", choices=("methods", "models", "datasets", "pairs", "presets"))
    listing.add_argument(
        "--verbose", action="store_true", help="methods: each one's citation, hyper-parameters and defaults"
    )
    listing.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="also list what this Python file registers (repeatable; it is executed, as in `run`)",
    )

    bench = _command(commands, "bench", "speed ratios of the engine, loader, VAM and methods, measured now")
    bench.add_argument("--dataset", default="synthetic")
    bench.add_argument("--data-root")
    bench.add_argument("--student", default="resnet8")
    bench.add_argument("--teacher", default="resnet20")
    bench.add_argument("--methods", default="kd,crd")
    bench.add_argument("--images", type=_whole(1), default=2048, help="training images per timed epoch")
    bench.add_argument("--repeats", type=_whole(1), default=3)
    bench.add_argument("--batch-size", type=_whole(1), default=128)
    bench.add_argument("--device", type=_device, default="cpu", help="torch device (cpu, cuda, cuda:1)")
    bench.add_argument(
        "--num-classes", type=_whole(2), help="synthetic data only: classes (100 = CIFAR-100-shaped)"
    )
    bench.add_argument("--image-size", type=_whole(8), help="synthetic data only: image side (32 = CIFAR)")
    bench.add_argument(
        "--concurrent",
        type=_whole_list,
        default=(4, 8),
        help="CUDA only: numbers of cohorts trained at once on the one card, one process each (e.g. 4,8)",
    )

    pins = _command(
        commands, "pins", "CI's fast tier: every method's first training steps against the pinned losses"
    )
    pins.add_argument("--file", help="pinned losses (default: results/baselines/step-losses.json)")
    pins.add_argument("--write", action="store_true", help="re-measure and rewrite the file")

    teacher = _command(commands, "teacher", "teacher commands")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True)
    train = _command(
        teacher_commands,
        "train",
        "train a teacher with the preset's teacher recipe and cache it",
        EXAMPLES["teacher"],
    )
    train.add_argument("name", help="architecture (kdbench list models)")
    train.add_argument(
        "--preset", default="quick", help="preset whose teacher recipe is used (default: quick)"
    )
    train.add_argument("--dataset", help="dataset name (default: the preset's)")
    train.add_argument(
        "--data-root", help="dataset folder (default: $KDBENCH_DATA, then the system locations)"
    )
    _add_teacher_recipe_flags(train)
    train.add_argument("--device", type=_device, default="cpu", help="torch device (cpu, cuda, cuda:1)")
    train.add_argument("--force", action="store_true", help="retrain even when the teacher is cached")
    train.add_argument(
        "--threads",
        type=_whole(1),
        default=1,
        help="torch threads (default 1; a spec reproduces at the same count)",
    )
    _add_common(train)

    explain = _command(
        commands,
        "explain",
        "KDExplainer: train the HME plain, with label smoothing and with KD; compare routing entropy",
    )
    explain.add_argument(
        "--teacher",
        required=True,
        help="a model name (trained by the quick preset's teacher recipe and cached) or a checkpoint path",
    )
    explain.add_argument("--teacher-arch", help="architecture of a --teacher checkpoint not saved by kdbench")
    explain.add_argument("--dataset", default="fashion-mnist", help="dataset name (default: %(default)s)")
    explain.add_argument(
        "--data-root", help="dataset folder (default: $KDBENCH_DATA, then the system locations)"
    )
    explain.add_argument("--seeds", type=_whole(1), help="number of seeds (0..N-1; default 2)")
    explain.add_argument(
        "--epochs", type=_whole(1), help="HME epochs, half soft-routed, half hard (default 4)"
    )
    explain.add_argument(
        "--train-subset", type=_whole(0), help="stratified training subset, 0 = all (default 6000)"
    )
    explain.add_argument("--student", help="HME model name (default: hme_small; hme = the authors' width)")
    explain.add_argument("--device", type=_device, default="cpu", help="torch device (cpu, cuda, cuda:1)")
    explain.add_argument("--force", action="store_true", help="re-run specs that already have a record")
    _add_parallel_flags(explain)
    _add_common(explain)
    return parser


def _parse_hp(items: list[str]) -> dict[str, list]:
    """--hp METHOD.KEY=V[,V...] as {METHOD.KEY: [values]}: several values are a grid."""
    overrides: dict[str, list] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name or not value:
            raise ConfigError(
                f"bad --hp '{item}': write METHOD.KEY=VALUE[,VALUE...], e.g. kd.temperature=2,4"
            )
        overrides[key] = value.split(",")  # typed by the method's defaults (resolve_hp)
    return overrides


def _flag_layer(args) -> dict:
    """The run flags the user gave, as a configuration layer over the sweep file and the preset."""
    recipe = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "val_split": args.val_split,
    }
    teacher_recipe = {"epochs": args.teacher_epochs}
    for key in ("image_size", "loader"):
        recipe[key] = teacher_recipe[key] = getattr(args, key)
    recipe, teacher_recipe = _given(recipe), _given(teacher_recipe)
    if args.train_subset is not None:  # 0 is "all": a None that must still override the preset's subset
        recipe["train_subset"] = teacher_recipe["train_subset"] = args.train_subset or None
    vam_config = {
        "groups": args.vam_groups,
        "lr_scale": args.vam_lr_scale,
        "last_stages": args.vam_last_stages,
        "entropy_weight": args.vam_entropy_weight,
    }
    layer = {
        "methods": args.methods,
        "pairs": args.pairs,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "seeds": args.seeds,
        "recipe": recipe,
        "teacher_recipe": teacher_recipe,
        "vam": args.vam,
        "vam_config": _given(vam_config),
        "hp": _parse_hp(args.hp),
        "teacher": args.teacher,
        "device": args.device,
        "force": args.force or None,
        "cohort": args.cohort,
        "max_runs": args.max_runs,
        "precision": args.precision,
        "compile": args.compile or None,
        "threads": args.threads,
        "jobs": args.jobs,
        "backend": args.backend,
        "ray_address": args.ray_address,
        "slurm": _slurm_options(args),
        "out": args.out,
        "log": args.log,
        "student_init": args.student_init,
    }
    if args.plugin:
        from kdbench.execution.plugins import resolve

        layer["custom_imports"] = {"imports": resolve(args.plugin, Path.cwd())}
    return _given(layer)


def _slurm_options(args) -> dict:
    return _given(
        {
            "partition": args.slurm_partition,
            "gpus_per_task": args.slurm_gpus_per_task,
            "time_min": args.slurm_time,
            "array_parallelism": args.slurm_array_parallelism,
        }
    )


def _given(layer: dict) -> dict:
    return {key: value for key, value in layer.items() if value is not None and value != {}}


def _resolved_config(args) -> dict:
    from kdbench.execution import config

    return config.resolve(args.config, _flag_layer(args), args.preset)


def _request_from_args(args):
    from kdbench.execution import config

    return config.build_request(_resolved_config(args))


def _teacher_recipe(args, teacher_recipe):
    """The preset's teacher recipe with --teacher-epochs / --train-subset applied."""
    if args.teacher_epochs is not None:
        teacher_recipe = teacher_recipe.with_epochs(args.teacher_epochs)
    if args.train_subset is not None:
        teacher_recipe = replace(teacher_recipe, train_subset=args.train_subset or None)
    return teacher_recipe


def _parallelism(args) -> dict:
    from kdbench.core.environment import default_jobs

    return {
        "threads": args.threads,
        "jobs": args.jobs or default_jobs(args.device, args.threads),
        "backend": args.backend,
        "ray_address": args.ray_address,
        "slurm": _slurm_options(args),
    }


def _print_board(out: Path, fmt: str, dataset: str | None = None, published: bool = True) -> bool:
    from kdbench import reporting
    from kdbench.core import store

    records = store.load_records(out)
    if not records:
        print(f"no run records under {out}/runs; run `kdbench run --out {out}` first", file=sys.stderr)
        return False
    board = reporting.leaderboard(records, reporting.load_published() if published else None, dataset=dataset)
    print(reporting.render(board, fmt))
    return True


def cmd_run(args) -> int:
    from kdbench.core import distributed
    from kdbench.execution import config
    from kdbench.execution.sweep import Sweep, check_size

    resolved = _resolved_config(args)
    distributed.init_from_env(resolved["device"])  # under torchrun: one run on every process
    if args.workers is not None:  # inherited by every worker process the sweep starts
        os.environ["KDBENCH_WORKERS"] = str(args.workers)  # kdbench/data/streaming.py
    request = config.build_request(resolved)
    check_size(request)  # a grid too large is refused before the store is touched
    request = config.prepare(request, resolved, args.argv, write=distributed.is_main())
    quiet = None if distributed.is_main() else (lambda line: None)
    summary = Sweep(request, progress=quiet).run()
    if not distributed.is_main():
        return 1 if summary.failed else 0
    print(
        f"{len(summary.done)} trained, {len(summary.cached)} cached, {len(summary.failed)} failed "
        f"(records in {request.out}/runs)",
        file=sys.stderr,
    )
    _print_board(request.out, args.format, dataset=request.dataset)
    return 1 if summary.failed else 0


def cmd_rerun(args) -> int:
    from kdbench.execution.rerun import rerun

    result = rerun(
        Path(args.record),
        args.out,
        args.teacher,
        args.data_root,
        args.device,
        student_init=args.student_init,
        plugin_files=args.plugin,
    )
    top1 = (result.rerun.get("metrics") or {}).get("last_top1")
    if result.identical:
        print(f"reproduced {result.original['run_id']} bit for bit (last top-1 {top1})")
        return 0
    print(f"{result.original['run_id']} differs in {len(result.differences)} value(s):")
    print("\n".join(f"  {line}" for line in result.differences))
    return 1


def cmd_report(args) -> int:
    from kdbench import reporting
    from kdbench.core import store

    if not _print_board(Path(args.out), args.format, args.dataset, published=not args.no_published):
        return 1
    if args.plot:
        records = store.load_records(Path(args.out))
        plot_dir = Path(args.plot)
        for path in (
            reporting.plot_accuracy_vs_overhead(records, plot_dir / "accuracy_vs_overhead.png"),
            reporting.plot_learning_curves(records, plot_dir / "learning_curves.png"),
        ):
            print(f"wrote {path}", file=sys.stderr)
    if args.vam_entropy:
        entropy = reporting.vam_entropy_table(store.load_records(Path(args.out)))
        print("\nVAM attention row entropy (nats; log G = no specialisation), mean over seeds:")
        print(entropy.to_string() if not entropy.empty else "(no VAM runs)")
    return 0


def cmd_check(args) -> int:
    from kdbench import reporting
    from kdbench.core import store

    records = store.load_records(Path(args.out))
    if args.write_baseline:
        options = {
            key: value
            for key, value in (("alpha", args.alpha), ("floor_pts", args.floor))
            if value is not None
        }
        baseline = reporting.write_baseline(records, Path(args.baseline), **options)
        print(f"wrote baseline {args.baseline}: {len(baseline['cells'])} cells", file=sys.stderr)
        return 0
    baseline = reporting.read_baseline(Path(args.baseline))
    changed = [] if args.no_pins else _pinned_changes(args.pins)
    regressions = reporting.check_regression(records, baseline, args.alpha, args.floor)
    for line in regressions:
        print(f"REGRESSION: {line}")
    print(
        f"{len(regressions)} regression(s) in {len(baseline['cells'])} cells of {args.baseline}",
        file=sys.stderr,
    )
    return 1 if regressions or changed else 0


def _pinned_changes(path: str | None) -> list[str]:
    """The gate's fast tier: every method's first steps against the pinned losses (kdbench/devtools/pins.py)."""
    from kdbench.devtools import pins

    path = Path(path) if path else pins.DEFAULT_FILE
    problem = file_problem(path, missing="not found")
    if problem:
        raise ConfigError(f"pinned losses {path} {problem}; make them with `kdbench pins --write`")
    changed = pins.check(path)
    for line in changed:
        print(f"CHANGED: {line}")
    print(f"{len(changed)} pinned loss(es) changed against {path}", file=sys.stderr)
    return changed


def cmd_list(args) -> int:
    from kdbench.execution import plugins

    # installed plugins' entry points register their names too
    plugins.load(plugins.resolve(args.plugin, Path.cwd()))
    if args.what == "methods":
        from kdbench.core.registries import METHODS

        for name in sorted(name for name in METHODS.module_dict if "+" not in name):
            cls = METHODS.get(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            source = plugins.owner("method", name)
            print(f"{name:12s} {summary}" + (f" (plugin {source})" if source else ""))
            if args.verbose:
                citation = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[:1]
                print(f"{'':12s} paper: {citation[0] if citation else '(none)'}")
                hp = ", ".join(f"{key}={value}" for key, value in cls.resolve_hp().items())
                print(f"{'':12s} hyper-parameters (--hp {name}.KEY=VALUE): {hp}")
        print(
            f"{'NAME+kd':12s} Any teacher method plus vanilla KD (kd_weight 1), e.g. crd+kd as in the CRD paper."
        )
    elif args.what == "models":
        from kdbench.models import list_models

        print("\n".join(list_models() + ["timm:<any timm model name>"]))
    elif args.what == "datasets":
        from kdbench.data import list_datasets

        print("\n".join(list_datasets()))
    elif args.what == "pairs":
        from kdbench.core.catalog import pair_groups, registered_pairs

        for group in pair_groups():
            print(f"{group}: " + ", ".join(str(p) for p in registered_pairs(group)))
    else:
        from kdbench.core.catalog import presets

        for name, body in presets().items():
            print(f"{name:8s} {body['description']}")
    return 0


def cmd_teacher(args) -> int:
    from kdbench.core.catalog import preset
    from kdbench.core.spec import Recipe
    from kdbench.data import resolve_recipe
    from kdbench.training.teachers import ensure_teacher

    chosen = preset(args.preset)
    dataset = args.dataset or chosen["dataset"]
    # the image size and the loader (auto unless the preset names one) decided from the data
    recipe = Recipe.from_dict({"loader": "auto", **chosen["teacher_recipe"]})
    path, digest = ensure_teacher(
        args.name,
        dataset,
        resolve_recipe(dataset, args.data_root, _teacher_recipe(args, recipe), device=args.device),
        Path(args.out),
        data_root=args.data_root,
        device=args.device,
        force=args.force,
        threads=args.threads,
        env_extra={"concurrent_runs": 1},
    )
    print(f"teacher {args.name} on {dataset}: {path} sha256 {digest}")
    return 0


def cmd_bench(args) -> int:
    from tabulate import tabulate

    from kdbench.devtools.bench import run_bench

    rows = run_bench(
        dataset=args.dataset,
        student=args.student,
        teacher=args.teacher,
        methods=tuple(m for m in args.methods.split(",") if m),
        train_images=args.images,
        batch_size=args.batch_size,
        repeats=args.repeats,
        data_root=args.data_root,
        device=args.device,
        concurrent=args.concurrent,
        dataset_options={
            key: value
            for key, value in (
                ("num_classes", args.num_classes),
                ("image_size", args.image_size),
                ("num_train", args.images if args.dataset == "synthetic" else None),
            )
            if value is not None
        },
    )
    columns = ("measure", "runs", "seconds", "images_per_s", "ratio", "throughput_x", "reference")
    print(tabulate([[row[c] for c in columns] for row in rows], headers=columns, floatfmt=".3f"))
    print(
        "ratio = seconds / the reference row's seconds (the same work); throughput_x = images/s / the "
        "reference's images/s (images = training images x runs); all measured in this run, best of repeats"
    )
    return 0


def cmd_pins(args) -> int:
    from kdbench.devtools import pins

    path = Path(args.file) if args.file else pins.DEFAULT_FILE
    if args.write:
        content = pins.write(path)
        loosest = max(content["rtol"], key=content["rtol"].get)
        print(
            f"wrote {path}: {len(content['losses'])} cases, rtol per case up to {content['rtol'][loosest]:.1e} "
            f"({loosest})",
            file=sys.stderr,
        )
        return 0
    return 1 if _pinned_changes(args.file) else 0


def cmd_explain(args) -> int:
    from kdbench import explain
    from kdbench.core.catalog import preset
    from kdbench.core.spec import Recipe
    from kdbench.reporting import explain_report

    recipe = explain.explain_recipe(
        explain.DEFAULT_EPOCHS if args.epochs is None else args.epochs,
        explain.DEFAULT_TRAIN_SUBSET if args.train_subset is None else args.train_subset or None,
    )
    request = explain.ExplainRequest(
        teacher=args.teacher,
        dataset=args.dataset,
        teacher_recipe=Recipe.from_dict(preset("quick")["teacher_recipe"]),
        recipe=recipe,
        student=args.student or explain.DEFAULT_STUDENT,
        seeds=explain.DEFAULT_SEEDS if args.seeds is None else args.seeds,
        teacher_arch=args.teacher_arch,
        data_root=args.data_root,
        out=Path(args.out),
        device=args.device,
        force=args.force,
        **_parallelism(args),
    )
    result = explain.run_explain(request)
    print(explain_report.render_report(result))
    for path in explain_report.write_report(result, Path(args.out)):
        print(f"wrote {path}", file=sys.stderr)
    return 1 if result.failed else 0


COMMANDS = {
    "bench": cmd_bench,
    "run": cmd_run,
    "report": cmd_report,
    "rerun": cmd_rerun,
    "check": cmd_check,
    "list": cmd_list,
    "teacher": cmd_teacher,
    "pins": cmd_pins,
    "explain": cmd_explain,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # written with a sweep's resolved configuration
    try:
        return COMMANDS[args.command](args)
    except KdbenchError as err:  # bad input: one line; any other exception is a bug and keeps its traceback
        print(f"kdbench: error: {err}", file=sys.stderr)
        return 2
    # BrokenPipeError before OSError, its base class: `kdbench list methods | head`, the reader left
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  interpreter shutdown flushes stdout again
        return 0
    except OSError as err:
        if err.errno == errno.ENOSPC:
            print(
                f"kdbench: error: no space left on device ({err.filename or 'results store'}); free space and "
                "re-run the same command: finished records are intact and unfinished runs resume",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        print(
            "kdbench: interrupted; finished records are saved, re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
