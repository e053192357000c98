"""Run units as SLURM jobs through submitit (`--backend slurm`), or as submitit's local jobs
(`--backend submitit-local`: the same jobs as processes on this machine, what the tests use).

    kdbench run --backend slurm --slurm-partition gpu --slurm-gpus-per-task 1 --slurm-time 240

One job per unit, each a `kdbench.execution.units.Worker` with the sweep's settings that writes its records itself
under the store's per-run claims, as a pool worker does: the store (`--out`) must be a folder every node
sees at the same path (a shared filesystem), and the jobs run this Python (`sys.executable`), so the
login node's environment must be usable on the compute nodes. The units submitted together (all those
known when the sweep starts waiting) go out as one job array. submitit's files and each job's log
(`<job id>_0_log.err` holds the training lines) are in `<store>/slurm-logs/`.

Preemption and time-outs: SLURM signals the job (USR2, `signal_delay_s` before its end) and submitit
calls the job's `checkpoint()`, which requeues the same unit; the requeued job resumes every run from
its last epoch checkpoint (the engine saves one after each epoch). A job that fails (a bug) or dies
raises from `outcomes()` naming its runs, job and log; expected failures come back as "failed" outcomes.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from kdbench.core.errors import ConfigError
from kdbench.execution.backends.base import Backend
from kdbench.execution.units import Outcome, Unit, Worker, WorkerSettings

LOG_FOLDER = "slurm-logs"  # under the store
DEFAULT_TIME_MIN = 240  # a job's time limit; a run that outlasts it is requeued and resumes
MAX_REQUEUES = 20  # time-outs a unit may be requeued after (each resumes from the last epoch)
POLL_S = {"slurm": 10.0, "local": 0.5}  # seconds between looks at the jobs in flight


class UnitJob:
    """One unit as a submitit job. Checkpointable: on preemption or time-out submitit calls
    `checkpoint()` and requeues what it returns, the same unit, which resumes from its checkpoints."""

    def __init__(self, settings: WorkerSettings, unit: Unit):
        self.settings = settings
        self.unit = unit

    def __call__(self) -> list[Outcome]:
        return Worker(self.settings, progress_bar=False).execute(self.unit)  # a job is one process

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(UnitJob(self.settings, self.unit), *args, **kwargs)


def _runs(unit: Unit) -> str:
    return ", ".join(f"{spec.label} ({spec.run_id})" for spec in unit.specs)


class SlurmBackend(Backend):
    def __init__(
        self,
        settings: WorkerSettings,
        cluster: str = "slurm",
        partition: str | None = None,
        gpus_per_task: int | None = None,
        time_min: int | None = None,
        array_parallelism: int | None = None,
        max_running: int | None = None,
    ):
        """`cluster`: "slurm", or "local" for submitit's LocalExecutor. `gpus_per_task` defaults to 1 on
        CUDA, `time_min` to DEFAULT_TIME_MIN; `array_parallelism` caps the jobs running at once (SLURM's
        `%N` of an array, and the jobs this back-end keeps in flight), `max_running` caps only the latter
        (the local executor starts every job it is given at once)."""
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if cluster == "slurm" and missing:
            raise ConfigError(
                f"--backend slurm needs SLURM, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "not on this machine's PATH: run kdbench on a SLURM login node, or use --backend "
                "submitit-local to run the same jobs here"
            )
        try:
            import submitit
        except ImportError:
            raise ConfigError(f"--backend {cluster} needs submitit: pip install 'kdbench[slurm]'") from None
        cuda = settings.device.startswith("cuda")
        if cuda:
            settings = replace(settings, device="cuda")  # the GPU SLURM assigns the job
        gpus = (1 if cuda else 0) if gpus_per_task is None else gpus_per_task
        self.settings = settings
        self.cluster = cluster
        self.folder = Path(settings.out) / LOG_FOLDER
        self.executor = submitit.AutoExecutor(
            folder=self.folder,
            cluster=cluster,
            slurm_max_num_timeout=MAX_REQUEUES,
            local_max_num_timeout=MAX_REQUEUES,
        )
        self.executor.update_parameters(
            name="kdbench",
            timeout_min=time_min or DEFAULT_TIME_MIN,
            cpus_per_task=settings.threads or 1,
            slurm_partition=partition,
            slurm_gpus_per_task=gpus or None,
            slurm_array_parallelism=array_parallelism,
            local_gpus_per_node=gpus,  # the local executor hides every GPU from a job asking for none
        )
        self.max_running = max_running or array_parallelism
        self.pending: deque[Unit] = deque()
        self.in_flight: dict = {}  # submitit Job -> Unit

    def submit(self, unit: Unit) -> None:
        self.pending.append(unit)  # submitted (as one array with the other pending units) by outcomes()

    def _flush(self) -> None:
        """Submit the pending units the running cap allows, as one job array."""
        room = len(self.pending)
        if self.max_running is not None:
            room = min(room, self.max_running - len(self.in_flight))
        units = [self.pending.popleft() for _ in range(max(room, 0))]
        if not units:
            return
        with self.executor.batch():
            jobs = [self.executor.submit(UnitJob(self.settings, unit)) for unit in units]
        for job, unit in zip(jobs, units, strict=True):
            if self.cluster == "local":
                job._results_timeout_s = 1  # no network filesystem to wait for (submitit's default: 15 s)
            self.in_flight[job] = unit

    def outcomes(self) -> Iterator[Outcome]:
        while self.pending or self.in_flight:
            self._flush()
            finished = [job for job in self.in_flight if job.done()]
            if not finished:
                time.sleep(POLL_S.get(self.cluster, POLL_S["slurm"]))
                continue
            for job in finished:
                unit = self.in_flight.pop(job)
                try:
                    outcomes = job.result()
                except Exception as err:  # submitit's FailedJobError / UncompletedJobError
                    raise self._failure(job, unit, err) from err
                yield from outcomes

    def _failure(self, job, unit: Unit, err: Exception) -> Exception:
        lines = str(err).strip().splitlines()
        rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
        if type(err).__name__ == "FailedJobError" and len(rules) >= 2:
            summary = lines[rules[1] - 1].strip()  # the job's exception: the last line of its traceback
        else:  # UncompletedJobError: the job ended without a result (killed, out of time or memory)
            summary = " ".join(line.strip() for line in lines[:2])
        return RuntimeError(
            f"{self.cluster} job {job.job_id} failed while training {_runs(unit)}: {summary}; "
            f"its log: {job.paths.stderr}"
        )

    def cancel(self) -> None:
        """Cancel the jobs in flight (scancel; SIGINT to local jobs): their runs resume from their last
        epoch checkpoints on the next command. Units not yet submitted are dropped."""
        self.pending.clear()
        for job in self.in_flight:
            with contextlib.suppress(Exception):  # finished meanwhile
                job.cancel(check=False)
        self.in_flight.clear()
