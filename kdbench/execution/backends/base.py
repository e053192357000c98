"""The execution interface every back-end implements: submit units, iterate outcomes, cancel.

    with backend:                       # __exit__ with an exception (Ctrl-C, an error) cancels
        backend.submit(unit)            # a kdbench.execution.units.TeacherUnit or RunUnit (one run or a cohort)
        for outcome in backend.outcomes():   # one per run, as units finish, until none is in flight;
            backend.submit(more)             # submitting from the loop is allowed

A unit that raises (a bug, not an expected failure: those come back as "failed" outcomes)
raises from `outcomes()`, and the sweep stops.
"""

from __future__ import annotations

from collections.abc import Iterator

from kdbench.execution.units import Outcome, Unit


class Backend:
    def __enter__(self) -> Backend:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.cancel()
        self.close()
        return False

    def submit(self, unit: Unit) -> None:
        raise NotImplementedError

    def outcomes(self) -> Iterator[Outcome]:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop every unit now; unfinished runs resume from their checkpoints on the next command."""

    def close(self) -> None:
        """Release the back-end's resources once its work is done (or cancelled)."""
