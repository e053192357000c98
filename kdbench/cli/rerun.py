"""`kdbench rerun RECORD`: train one record's run again from the record alone and compare the numbers."""

from __future__ import annotations

from pathlib import Path

from kdbench.cli import common

HELP = "train one record's run again from the record alone and compare the numbers"
EXAMPLES = """examples:
  kdbench rerun kdbench-results/runs/5b72a9149be4.json   # exit 0: the same numbers, bit for bit
"""


def add(commands) -> None:
    common.command_parser(commands, "rerun", HELP, EXAMPLES)


def execute(args) -> int:
    from kdbench.execution.rerun import rerun

    result = rerun(
        Path(args.record),
        args.out,
        args.teacher,
        args.data_root,
        args.device,
        student_init=args.student_init,
        plugin_files=args.plugins,
    )
    top1 = (result.rerun.get("metrics") or {}).get("last_top1")
    if result.identical:
        print(f"reproduced {result.original['run_id']} bit for bit (last top-1 {top1})")
        return 0
    print(f"{result.original['run_id']} differs in {len(result.differences)} value(s):")
    print("\n".join(f"  {line}" for line in result.differences))
    return 1
