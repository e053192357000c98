"""The one base class of user errors, and what their messages share: values echoed clipped
(`shorten`, `clip`), and why a path is not a readable file (`file_problem`).

A `KdbenchError` is about what the user gave: a name, a value, a file, a store. `kdbench` prints
its message as one line (`kdbench: error: ...`) and exits 2. Every other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class KdbenchError(Exception):
    """Bad input; the message names the value, flag or file at fault and how to fix it."""


class ConfigError(KdbenchError, ValueError):
    """A flag, preset or spec value that is malformed or out of range."""


class PairNotSupportedError(KdbenchError, ValueError):
    """A method or a student wrapper cannot serve this teacher/student pair; raised before training
    starts, and recorded as that run's failure (the sweep's other runs go on)."""


# how much of a value a message echoes: a 100 KB `--methods` must not become a 100 KB error line
SHOWN_CHARS = 80


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` for a message, cut to `limit` characters with an ellipsis and its full length where it
    is longer."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} chars)"


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for a message (a name or value the user gave), clipped (`clip`)."""
    return clip(repr(value), limit)


def file_problem(path: object, missing: str = "does not exist") -> str | None:
    """Why `path` cannot be read as a file (`missing`, "is a directory, expected a file"), or None where
    it is a file; the caller raises its own error with it, naming the flag."""
    path = Path(path)
    if path.is_dir():
        return "is a directory, expected a file"
    if not path.is_file():
        return missing if not path.exists() else "is not a regular file"
    return None
