"""`kdbench bench`: speed ratios of the engine, loader, VAM and methods, measured in one run."""

from __future__ import annotations

from kdbench.cli import common

HELP = "speed ratios of the engine, loader, VAM and methods, measured now"
EXAMPLES = """examples:
  kdbench bench --dataset fashion-mnist --batch-size 64
"""


def add(commands) -> None:
    common.command_parser(commands, "bench", HELP, EXAMPLES)


def execute(args) -> int:
    from tabulate import tabulate

    from kdbench.devtools.bench import run_bench

    resolved = common.resolve(args, "bench")
    recipe = resolved["recipe"]
    synthetic = {
        "num_classes": resolved.get("num_classes"),
        "image_size": recipe.get("image_size"),
        "num_train": resolved["images"] if resolved["dataset"] == "synthetic" else None,
    }
    rows = run_bench(
        dataset=resolved["dataset"],
        student=resolved["student"],
        teacher=resolved["teacher"],
        methods=tuple(m for m in resolved["methods"].split(",") if m),
        train_images=resolved["images"],
        batch_size=recipe["batch_size"],
        repeats=resolved["repeats"],
        data_root=resolved.get("data_root"),
        device=resolved["device"],
        concurrent=resolved["concurrent"],
        dataset_options={key: value for key, value in synthetic.items() if value is not None},
    )
    columns = ("measure", "runs", "seconds", "images_per_s", "ratio", "throughput_x", "reference")
    print(tabulate([[row[c] for c in columns] for row in rows], headers=columns, floatfmt=".3f"))
    print(
        "ratio = seconds / the reference row's seconds (the same work); throughput_x = images/s / the "
        "reference's images/s (images = training images x runs); all measured in this run, best of repeats"
    )
    return 0
