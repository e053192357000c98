"""The one base class of user errors.

A `KdbenchError` is about what the user gave: a name, a value, a file, a store. `kdbench` prints
its message as one line (`kdbench: error: ...`) and exits 2. Every other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class KdbenchError(Exception):
    """Bad input; the message names the value, flag or file at fault and how to fix it."""


class ConfigError(KdbenchError, ValueError):
    """A flag, preset or spec value that is malformed or out of range."""
