"""`kdbench check`: CI's regression gate (non-zero exit when a result regresses below a baseline), with
its fast tier of pinned per-step losses."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common
from kdbench.core.errors import ConfigError, file_problem

HELP = "CI: non-zero exit when a result regresses below a baseline"
EXAMPLES = """examples:
  kdbench check --baseline results/baselines/ci.json --out STORE
  kdbench check --baseline new.json --write-baseline --out STORE
"""


def add(commands) -> None:
    common.command_parser(commands, "check", HELP, EXAMPLES)


def execute(args) -> int:
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
    changed = [] if args.no_pins else pinned_changes(args.pins)
    regressions = reporting.check_regression(records, baseline, args.alpha, args.floor)
    for line in regressions:
        print(f"REGRESSION: {line}")
    print(
        f"{len(regressions)} regression(s) in {len(baseline['cells'])} cells of {args.baseline}",
        file=sys.stderr,
    )
    return 1 if regressions or changed else 0


def pinned_changes(path: str | None) -> list[str]:
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
