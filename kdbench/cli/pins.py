"""`kdbench pins`: CI's fast tier, every method's first training steps against the pinned losses."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common
from kdbench.cli.check import pinned_changes

HELP = "CI's fast tier: every method's first training steps against the pinned losses"
EXAMPLES = """examples:
  kdbench pins            # exit 1 when a method's first training steps changed
  kdbench pins --add      # after adding a method: pin it, keep the other pins
  kdbench pins --write    # after changing a method's maths on purpose: re-pin every case
"""


def add(commands) -> None:
    common.command_parser(commands, "pins", HELP, EXAMPLES)


def execute(args) -> int:
    from kdbench.devtools import pins

    path = Path(args.file) if args.file else pins.DEFAULT_FILE
    if args.write or args.add:
        content = pins.add(path) if args.add else pins.write(path)
        loosest = max(content["rtol"], key=content["rtol"].get)
        print(
            f"wrote {path}: {len(content['losses'])} cases, rtol per case up to {content['rtol'][loosest]:.1e} "
            f"({loosest})",
            file=sys.stderr,
        )
        return 0
    return 1 if pinned_changes(args.file) else 0
