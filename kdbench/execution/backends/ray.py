"""Run units as Ray tasks (`--backend ray`): on a local Ray started here, or on a Ray cluster.

    kdbench run --backend ray                          # local Ray sized for this machine
    kdbench run --backend ray --ray-address auto       # join the cluster this node belongs to
    kdbench run --backend ray --ray-address HOST:6379  # join that cluster's head

One task per unit, asking for `cpus_per_unit` CPUs (the sweep's `--threads`) and `gpus_per_unit` GPUs
(1 on CUDA: Ray sets the task's CUDA_VISIBLE_DEVICES, so its device is plain "cuda"). A task executes
its unit on a `kdbench.execution.units.Worker`, one per Ray worker process and settings (kept between tasks, with
its decoded data and loaded teachers), which writes the records itself under the store's per-run claims,
as a pool worker does: the store (`--out`) must be a folder every node sees at the same path (a shared
filesystem such as NFS or Lustre), and every node needs kdbench (`pip install 'kdbench[ray]'`) and the
data (`--data-root`). Where the cluster uses Ray's token authentication (on by default in recent Ray),
the joining process needs the cluster's token (Ray's docs, "token-auth").

Joining gives up in one line when the address does not accept a connection within CONNECT_TIMEOUT_S
(Ray itself would retry for many minutes), and makes one attempt at an address that accepts one but
does not answer as a Ray cluster (Ray's `RAY_gcs_server_port_wait_time_s`, when it is not set, is 1).

Expected failures come back as "failed" outcomes; a unit that raises (a bug) raises from `outcomes()`
with its runs named. A task whose process dies (node lost, killed for memory) is retried by Ray and
resumes from its last epoch checkpoint. `cancel()` force-cancels the tasks in flight (their runs resume
from their checkpoints on the next command); `close()` shuts Ray down only when this back-end started it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import replace

from kdbench.core.environment import available_cores
from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.execution.backends.base import Backend
from kdbench.execution.units import Outcome, Unit, Worker, WorkerSettings

# Ray's own default, stated: a task whose worker process died is re-run (and resumes from its checkpoint).
TASK_RETRIES = 3
# seconds a cluster's address may take to accept a connection before kdbench gives up on it
CONNECT_TIMEOUT_S = 30

# One Worker per Ray worker process and settings, kept between the tasks that process runs.
_workers: dict[WorkerSettings, Worker] = {}


def _execute(settings: WorkerSettings, unit: Unit) -> list[Outcome]:
    """The body of one Ray task."""
    if settings not in _workers:
        _workers[settings] = Worker(settings, progress_bar=False)
    return _workers[settings].execute(unit)


def _runs(unit: Unit) -> str:
    return ", ".join(f"{spec.label} ({spec.run_id})" for spec in unit.specs)


def check_reachable(address: str) -> None:
    """A ConfigError unless HOST:PORT (or ray://HOST:PORT) accepts a connection within CONNECT_TIMEOUT_S;
    "auto" is Ray's to resolve."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, OverflowError) as err:
        reason = (
            "no answer" if isinstance(err, TimeoutError) else (getattr(err, "strerror", None) or str(err))
        )
        raise ConfigError(
            f"--ray-address {address}: no Ray cluster there ({reason}; kdbench waits {CONNECT_TIMEOUT_S} s); "
            "start one with `ray start --head`, or leave --ray-address out to run on a local Ray"
        ) from None


@contextlib.contextmanager
def _one_join_attempt() -> Iterator[None]:
    """Ray's join makes one attempt (not 20) unless RAY_gcs_server_port_wait_time_s says otherwise."""
    key = "RAY_gcs_server_port_wait_time_s"
    given = os.environ.get(key)
    os.environ.setdefault(key, "1")
    try:
        yield
    finally:
        if given is None:
            os.environ.pop(key, None)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'kdbench[ray]'") from None
    return ray


class RayBackend(Backend):
    def __init__(
        self,
        settings: WorkerSettings,
        address: str | None = None,
        cpus_per_unit: int | None = None,
        gpus_per_unit: int | None = None,
        num_cpus: int | None = None,
    ):
        """`address`: None starts a local Ray with `num_cpus` CPUs (default: this machine's cores);
        "auto" or "HOST:PORT" joins a running cluster. A Ray already initialised in this process is used
        as it is (and left running by `close()`)."""
        self.ray = ray = _import_ray()
        cuda = settings.device.startswith("cuda")
        if cuda:
            settings = replace(settings, device="cuda")  # the GPU Ray assigns the task
        self.settings = settings
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address is None:
                    # "local": a new Ray of our own, even where `ray start` runs one on this machine
                    ray.init(address="local", num_cpus=num_cpus or available_cores(), include_dashboard=False)
                else:
                    check_reachable(address)
                    with _one_join_attempt():
                        ray.init(address=address)
            except ConnectionError as err:
                raise ConfigError(
                    f"--ray-address {address}: could not join a Ray cluster there ({err}); start one with "
                    "`ray start --head` (where it uses Ray's token authentication, this process needs its "
                    "token), or leave --ray-address out to run on a local Ray"
                ) from None
        self.task = ray.remote(_execute).options(
            num_cpus=cpus_per_unit or settings.threads or 1,
            num_gpus=(1 if cuda else 0) if gpus_per_unit is None else gpus_per_unit,
            max_retries=TASK_RETRIES,
        )
        self.in_flight: dict = {}  # ObjectRef -> Unit

    def submit(self, unit: Unit) -> None:
        self.in_flight[self.task.remote(self.settings, unit)] = unit

    def outcomes(self) -> Iterator[Outcome]:
        ray = self.ray
        while self.in_flight:
            finished, _ = ray.wait(list(self.in_flight), num_returns=1)
            for ref in finished:
                unit = self.in_flight.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, KdbenchError):  # bad input found by a worker: its own message
                        raise err.cause from err
                    raise RuntimeError(
                        f"a Ray task failed while training {_runs(unit)}: {type(err.cause).__name__}: "
                        f"{err.cause}"
                    ) from err
                except ray.exceptions.RayError as err:  # its process died more often than retried
                    raise RuntimeError(f"a Ray task died while training {_runs(unit)}: {err}") from err
                yield from outcomes

    def cancel(self) -> None:
        """Force-cancel the tasks in flight (their runs resume from their last epoch checkpoints)."""
        for ref in self.in_flight:
            with contextlib.suppress(Exception):  # finished meanwhile, or Ray is already down
                self.ray.cancel(ref, force=True)
        self.in_flight.clear()

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
