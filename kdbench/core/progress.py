"""Progress lines: where kdbench's one-line status messages go when a caller passes no sink."""

from __future__ import annotations

import sys


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bar(iterable=None, **options):
    """A tqdm bar sized from the terminal, or 80x24 where the terminal reports no size (a fresh
    pseudo-terminal does: tqdm then hides every bar, as if the screen had no rows)."""
    import shutil

    from tqdm import tqdm

    columns, lines = shutil.get_terminal_size((80, 24))
    return tqdm(iterable, ncols=columns, nrows=lines, **options)
