"""`kdbench report`: the leaderboard of a store's records, and its plots."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common

HELP = "leaderboard from the records of a store"
EXAMPLES = """examples:
  kdbench report --format markdown
  kdbench report --format html > board.html              # one self-contained page
  kdbench report --format latex --no-published --plot plots/
"""


def add(commands) -> None:
    common.command_parser(commands, "report", HELP, EXAMPLES)


def execute(args) -> int:
    from kdbench import reporting
    from kdbench.core import store

    if not common.print_board(Path(args.out), args.format, args.dataset, published=not args.no_published):
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
        entropy = reporting.wrapper_summary_table(store.load_records(Path(args.out)), "vam")
        print("\nVAM attention row entropy (nats; log G = no specialisation), mean over seeds:")
        print(entropy.to_string() if not entropy.empty else "(no VAM runs)")
    return 0
