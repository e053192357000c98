"""Run units on a local pool of worker processes (`--jobs N`, the default on CPU).

Spawned processes (no forked torch or thread-pool state), each a `kdbench.execution.units.Worker` with the
sweep's thread count, so a spec's numbers do not depend on `--jobs` (tested). Workers ignore
SIGINT: the parent alone handles Ctrl-C, by terminating them; on Linux a worker also dies with its
parent (PR_SET_PDEATHSIG), so a killed `kdbench run` leaves no orphans. A worker that fails to
start fails the sweep with its own error (it is not restarted); a worker that dies mid-unit breaks
the pool, which fails the sweep with a message naming the unit.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from kdbench.core.errors import KdbenchError
from kdbench.execution.backends.base import Backend
from kdbench.execution.units import Outcome, Unit, Worker, WorkerSettings


class WorkerStartupError(KdbenchError, RuntimeError):
    """A pool worker could not start (its own error is the cause)."""


# One Worker per process: it keeps the decoded datasets and the loaded teachers between units.
_worker: Worker | None = None
_startup_error: BaseException | None = None


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_worker(settings: WorkerSettings) -> None:
    global _worker, _startup_error
    # Ctrl-C reaches the whole process group: the parent alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    try:
        _worker = Worker(settings, progress_bar=False)
    except BaseException as err:  # reported by the first unit, so the parent sees this very error
        _startup_error = err


def _execute(unit: Unit) -> list[Outcome]:
    if _startup_error is not None:
        raise WorkerStartupError(f"a pool worker failed to start: {_startup_error}") from _startup_error
    return _worker.execute(unit)


class PoolBackend(Backend):
    def __init__(self, settings: WorkerSettings, jobs: int):
        self.executor = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(settings,),
        )
        self.in_flight: dict[Future, Unit] = {}

    def submit(self, unit: Unit) -> None:
        self.in_flight[self.executor.submit(_execute, unit)] = unit

    def outcomes(self) -> Iterator[Outcome]:
        while self.in_flight:
            finished, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
            for future in finished:
                unit = self.in_flight.pop(future)
                try:
                    outcomes = future.result()
                except BrokenProcessPool as err:
                    runs = ", ".join(f"{spec.label} ({spec.run_id})" for spec in unit.specs)
                    raise RuntimeError(f"a pool worker died while training {runs}: {err}") from err
                yield from outcomes

    def cancel(self) -> None:
        """Terminate the workers now (their runs resume from their last epoch checkpoints)."""
        # ProcessPoolExecutor has no public terminate before Python 3.14 (terminate_workers);
        # its process table is dropped by shutdown, so it is read first.
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        self.in_flight.clear()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
