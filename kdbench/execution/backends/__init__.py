"""Where units of work run (kdbench/execution/backends/base.py has the interface): in this process, on a
local process pool, on Ray, or as SLURM jobs through submitit (its local executor too)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from kdbench.core.errors import ConfigError
from kdbench.execution.backends.base import Backend
from kdbench.execution.backends.inprocess import InProcessBackend
from kdbench.execution.backends.pool import PoolBackend, WorkerStartupError
from kdbench.execution.settings import BACKENDS
from kdbench.execution.units import WorkerSettings


def open_backend(
    name: str,
    settings: WorkerSettings,
    jobs: int,
    *,
    ray_address: str | None = None,
    slurm: dict | None = None,
    progress: Callable[[str], None] | None = None,
    progress_bar: bool | None = None,
) -> Backend:
    """ "local" runs in this process for one job, else on a local process pool; "ray", "slurm" and
    "submitit-local" run elsewhere (imported only when named)."""
    # another process trains with this one's thread count unless the settings name one
    elsewhere = replace(settings, threads=settings.threads or torch.get_num_threads())
    slurm = slurm or {}
    if name == "local":
        return (
            PoolBackend(elsewhere, jobs) if jobs > 1 else InProcessBackend(settings, progress, progress_bar)
        )
    if name == "ray":
        from kdbench.execution.backends.ray import RayBackend

        return RayBackend(elsewhere, address=ray_address)
    if name in ("slurm", "submitit-local"):
        from kdbench.execution.backends.slurm import SlurmBackend

        local = {"cluster": "local", "max_running": jobs} if name == "submitit-local" else {}
        return SlurmBackend(elsewhere, **{**local, **slurm})
    raise ConfigError(f"unknown back-end '{name}'; choose from {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "InProcessBackend", "PoolBackend", "WorkerStartupError", "open_backend"]
