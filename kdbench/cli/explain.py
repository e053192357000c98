"""`kdbench explain`: KDExplainer, the HME trained plain, with label smoothing and with KD."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common

HELP = "KDExplainer: train the HME plain, with label smoothing and with KD; compare routing entropy"
EXAMPLES = """examples:
  kdbench explain --teacher resnet20 --dataset fashion-mnist
"""


def add(commands) -> None:
    common.command_parser(commands, "explain", HELP, EXAMPLES)


def execute(args) -> int:
    from kdbench import explain
    from kdbench.reporting import explain_report

    request = explain.build_request(common.resolve(args, "explain"))
    result = explain.run_explain(request)
    print(explain_report.render_report(result))
    for path in explain_report.write_report(result, Path(request.out)):
        print(f"wrote {path}", file=sys.stderr)
    return 1 if result.failed else 0
