"""`kdbench site STORE [STORE ...] --out DIR`: a static, self-contained leaderboard site of the stores."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common

HELP = "static leaderboard site (HTML, charts shipped inside) of one or more stores"
EXAMPLES = """examples:
  kdbench site kdbench-results --out site/      # then open site/index.html
  kdbench site results/a results/b --out site/ --no-published
"""


def add(commands) -> None:
    common.command_parser(commands, "site", HELP, EXAMPLES)


def execute(args) -> int:
    from kdbench.reporting.site import write_site

    index = write_site(
        [Path(store) for store in args.stores],
        Path(args.out),
        published=not args.no_published,
        command=args.argv,
    )
    print(f"wrote {index}", file=sys.stderr)
    return 0
