"""Command line: parses flags (declared in kdbench/execution/settings.py), resolves a command's
configuration (kdbench/execution/config.py `resolve`), calls the library. One module per command:

kdbench run [--preset quick] [--methods kd,crd] [--pairs t:s,...] [--vam on|off|both] ...   run.py
kdbench report [--out DIR] [--format terminal|markdown|csv|latex|html] [--plot DIR]        report.py
kdbench check --baseline FILE [--out DIR]                                                   check.py
kdbench list methods|models|datasets|pairs|presets                                          listing.py
kdbench teacher train NAME --dataset D                                                      teacher.py
kdbench explain --teacher NAME|PATH [--dataset D] [--seeds N] [--epochs E] [--out DIR]     explain.py
kdbench rerun RECORD, kdbench bench, kdbench pins                                rerun.py, bench.py, pins.py
kdbench site STORE [STORE ...] --out DIR                                                    site.py
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from kdbench.cli import bench, check, common, explain, listing, pins, report, rerun, run, site, teacher
from kdbench.core.errors import KdbenchError

COMMANDS = {
    "run": run,
    "report": report,
    "rerun": rerun,
    "check": check,
    "list": listing,
    "bench": bench,
    "pins": pins,
    "teacher": teacher,
    "explain": explain,
    "site": site,
}
EXAMPLES = {name: module.EXAMPLES for name, module in COMMANDS.items()}

# what tests and tools call by these names
_resolved_config = run.resolved_config
_request_from_args = run.request_from_args


def build_parser() -> argparse.ArgumentParser:
    from kdbench import __version__

    parser = common.Parser(prog="kdbench", description="Knowledge-distillation benchmark and leaderboard.")
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add(commands)
    return parser


def _quiet_stdout() -> None:
    """Point stdout's descriptor at /dev/null: what its buffer still holds (the reader left) is flushed
    there at interpreter shutdown instead of raising BrokenPipeError again ('Exception ignored')."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # written with a sweep's resolved configuration
    try:
        code = COMMANDS[args.command].execute(args)
        sys.stdout.flush()  # a reader that left (`| head -1`) is found here, not at interpreter shutdown
        return code
    except KdbenchError as err:  # bad input: one line; any other exception is a bug and keeps its traceback
        print(f"kdbench: error: {err}", file=sys.stderr)
        return 2
    # BrokenPipeError before OSError, its base class: `kdbench report | head -1`, the reader left
    except BrokenPipeError:
        _quiet_stdout()
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
