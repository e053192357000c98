"""`kdbench teacher train NAME`: train a teacher with a preset's teacher recipe and cache it."""

from __future__ import annotations

from pathlib import Path

from kdbench.cli import common

HELP = "teacher commands"
EXAMPLES = """examples:
  kdbench teacher train resnet56 --dataset fashion-mnist --teacher-epochs 30
"""


def add(commands) -> None:
    teacher = common.command_parser(commands, "teacher", HELP, EXAMPLES, flags_of="")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True)
    common.command_parser(
        teacher_commands,
        "train",
        "train a teacher with the preset's teacher recipe and cache it",
        EXAMPLES,
        flags_of="teacher",
    )


def execute(args) -> int:
    from kdbench.core.spec import Recipe
    from kdbench.data import resolve_recipe
    from kdbench.training.teachers import ensure_teacher

    resolved = common.resolve(args, "teacher")
    dataset, data_root, device = resolved["dataset"], resolved.get("data_root"), resolved["device"]
    # the image size and the loader (auto unless the preset names one) decided from the data
    recipe = Recipe.from_dict({"loader": "auto", **resolved["teacher_recipe"]})
    path, digest = ensure_teacher(
        args.name,
        dataset,
        resolve_recipe(dataset, data_root, recipe, device=device),
        Path(resolved["out"]),
        data_root=data_root,
        device=device,
        force=bool(resolved.get("force")),
        threads=resolved["threads"],
        env_extra={"concurrent_runs": 1},
    )
    print(f"teacher {args.name} on {dataset}: {path} sha256 {digest}")
    return 0
