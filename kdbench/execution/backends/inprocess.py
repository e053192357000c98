"""Run units one after another in this process (`--jobs 1`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from kdbench.execution.backends.base import Backend
from kdbench.execution.units import Outcome, Unit, Worker, WorkerSettings


class InProcessBackend(Backend):
    def __init__(
        self,
        settings: WorkerSettings,
        progress: Callable[[str], None] | None = None,
        progress_bar: bool | None = None,
    ):
        self.worker = Worker(settings, progress=progress, progress_bar=progress_bar)
        self.queue: deque[Unit] = deque()

    def submit(self, unit: Unit) -> None:
        self.queue.append(unit)

    def outcomes(self) -> Iterator[Outcome]:
        while self.queue:  # FIFO; a teacher's outcome may submit (and so queue) its pair's runs
            yield from self.worker.execute(self.queue.popleft())

    def cancel(self) -> None:
        self.queue.clear()
