"""What every unit of a sweep shares on a worker: the settings of kdbench/execution/settings.py `WORKER`
(the store, data location, device, threads, force, plugins, trackers, fuse), and how many runs share the machine."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.execution import settings


@dataclass(frozen=True)
@settings.with_settings(*settings.WORKER)
class WorkerSettings:
    concurrent_runs: int = (
        1  # recorded in the environment: how many runs shared the machine (the sweep's jobs)
    )
