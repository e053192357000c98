"""Progress lines: where kdbench's one-line status messages go when a caller passes no sink."""

from __future__ import annotations

import sys


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
