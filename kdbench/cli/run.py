"""`kdbench run`: train a grid of methods x pairs x seeds x VAM, then print the board."""

from __future__ import annotations

import os
import sys

from kdbench.cli import common

HELP = "train a grid of methods x pairs x seeds x VAM, then print the board"
EXAMPLES = """examples:
  kdbench run --methods kd,crd --vam on                  # the quick preset's pair and dataset
  kdbench run --preset paper --methods crd+kd,dkd        # RepDistiller's CIFAR-100 recipe, 13 pairs
  kdbench run --config sweep.yaml --seeds 5              # a sweep file; flags override it
  kdbench run --hp kd.temperature=2,4 --methods kd       # a grid: two kd configurations
  kdbench run --plugin my_method.py --methods my_method  # your own method
"""


def preset_table() -> str:
    """The presets' values, for `kdbench run --help`: what an unset flag becomes."""
    from kdbench.core.catalog import presets
    from kdbench.execution import settings

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
    shown = {key: ("on" if value is True else value) for key, value in settings.defaults("run").items()}
    lines.append("under every preset: " + ", ".join(f"--{key} {value}" for key, value in shown.items()))
    return "\n".join(lines) + "\n"


def add(commands) -> None:
    common.command_parser(commands, "run", HELP, EXAMPLES + "\n" + preset_table())


def resolved_config(args) -> dict:
    return common.resolve(args, "run")


def request_from_args(args):
    from kdbench.execution import config

    return config.build_request(resolved_config(args))


def execute(args) -> int:
    from kdbench.core import distributed
    from kdbench.execution import config
    from kdbench.execution.sweep import Sweep, check_size

    resolved = resolved_config(args)
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
    common.print_board(request.out, args.format, dataset=request.dataset)
    return 1 if summary.failed else 0
