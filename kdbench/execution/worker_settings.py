"""What every unit of a sweep shares on a worker: the store, data location, device, threads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerSettings:
    out: Path
    data_root: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads per run (None: leave torch's setting)
    concurrent_runs: int = 1  # recorded in the environment: how many runs shared the machine
    force: bool = False  # re-train a unit even when its record is done
    plugins: tuple[
        str, ...
    ] = ()  # loaded by every worker before its first unit (kdbench/execution/plugins.py)
    trackers: tuple[str, ...] = ()  # --log: tensorboard, mlflow, wandb, aim (kdbench/core/trackers.py)
