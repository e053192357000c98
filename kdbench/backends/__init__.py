"""Where units of work run: in this process or on a local process pool (kdbench/backends/base.py
has the interface a cluster back-end implements too)."""

from kdbench.backends.base import Backend
from kdbench.backends.inprocess import InProcessBackend
from kdbench.backends.pool import PoolBackend, WorkerStartupError

__all__ = ["Backend", "InProcessBackend", "PoolBackend", "WorkerStartupError"]
