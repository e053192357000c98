"""The cluster back-ends on real engines: a local Ray (kdbench/execution/backends/ray.py) and submitit's local
executor (kdbench/execution/backends/slurm.py) give the records of the local process pool; a submitit job
preempted or killed mid-run resumes from its checkpoint; `--backend slurm` without SLURM is one line."""

import fcntl
import os
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_sweep import quiet, records_by_method, request

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.spec import RunSpec
from kdbench.execution.sweep import Sweep
from kdbench.execution.units import RunUnit, WorkerSettings

ray = pytest.importorskip("ray")
pytest.importorskip("submitit")

KD_LABEL = "kd resnet14→resnet8 synthetic seed=0"


@pytest.fixture(scope="module")
def pool_records(tmp_path_factory):
    """The local pool's records of the sweep every back-end here runs (2 workers, 1 thread each)."""
    out = tmp_path_factory.mktemp("pool")
    Sweep(request(out, threads=1, jobs=2), progress=quiet).run()
    return records_by_method(out)


def assert_same_records(records, expected):
    assert set(records) == set(expected)
    for key, record in records.items():
        assert record["run_id"] == expected[key]["run_id"]
        assert record["metrics"] == expected[key]["metrics"]
        train_losses = [h["train_loss"] for h in record["history"]]
        assert train_losses == [h["train_loss"] for h in expected[key]["history"]]
        assert record["environment"]["threads"] == 1


def test_ray_gives_the_records_of_the_local_pool_and_shuts_down_the_ray_it_started(tmp_path, pool_records):
    assert not ray.is_initialized()
    # no address: the back-end starts a local Ray with this machine's cores, and shuts it down after
    summary = Sweep(request(tmp_path, threads=1, jobs=2, backend="ray"), progress=quiet).run()
    assert len(summary.done) == 2 and not summary.failed
    assert_same_records(records_by_method(tmp_path), pool_records)
    assert not ray.is_initialized()
    again = Sweep(request(tmp_path, threads=1, jobs=2, backend="ray"), progress=quiet).run()
    assert sorted(again.cached) == sorted(summary.done) and not again.done  # nothing re-trained


def test_submitit_local_gives_the_records_of_the_local_pool(tmp_path, pool_records):
    summary = Sweep(request(tmp_path, threads=1, jobs=2, backend="submitit-local"), progress=quiet).run()
    assert len(summary.done) == 2 and not summary.failed
    assert_same_records(records_by_method(tmp_path), pool_records)
    logs = list((tmp_path / "slurm-logs").glob("*_0_log.err"))
    assert len(logs) == 3  # the teacher's job, the baseline's, kd's
    assert any(f"{KD_LABEL} epoch 2/2" in log.read_text() for log in logs)


class SignalAfterFirstEpoch(threading.Thread):
    """Watches the store's submitit logs for kd's first epoch line, then sends `signum` to that job's
    process (the child of the local job's controller, whose pid is the job id)."""

    def __init__(self, out: Path, signum: int):
        super().__init__(daemon=True)
        self.out, self.signum = out, signum
        self.sent_to: str | None = None  # the job id
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and self.sent_to is None:
            for log in (self.out / "slurm-logs").glob("*_0_log.err"):
                if f"{KD_LABEL} epoch 1/2" in log.read_text():
                    job_id = log.name.split("_")[0]
                    os.kill(_child_of(int(job_id)), self.signum)
                    self.sent_to = job_id
                    break
            time.sleep(0.01)


def _child_of(pid: int) -> int:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            return int(stat.parent.name)
    raise AssertionError(f"process {pid} has no child")


def _watched_sweep(out: Path, signum: int):
    watcher = SignalAfterFirstEpoch(out, signum)
    watcher.start()
    try:
        return watcher, Sweep(
            request(out, methods=["kd"], threads=1, backend="submitit-local"), progress=quiet
        ).run()
    finally:
        watcher.stop.set()
        watcher.join()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process in /proc")
def test_a_preempted_submitit_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, pool_records):
    # USR2 is what SLURM sends before preempting or timing out a job: submitit calls the job's
    # checkpoint(), which requeues the same unit; the engine resumes it after its last epoch
    watcher, summary = _watched_sweep(tmp_path, signal.SIGUSR2)
    assert watcher.sent_to and len(summary.done) == 1 and not summary.failed
    log = (tmp_path / "slurm-logs" / f"{watcher.sent_to}_0_log.err").read_text()
    assert "this job is preempted" in log and f"resuming {KD_LABEL} after epoch 1" in log
    assert log.count(f"{KD_LABEL} epoch 1/2") == 1  # epoch 1 was not trained again
    kd = records_by_method(tmp_path)[("kd", False)]
    assert_same_records({("kd", False): kd}, {("kd", False): pool_records[("kd", False)]})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process in /proc")
def test_a_killed_submitit_job_resumes_from_its_checkpoint_when_the_sweep_runs_again(tmp_path, pool_records):
    kd_id = pool_records[("kd", False)]["run_id"]
    with pytest.raises(RuntimeError, match=rf"local job \d+ failed while training {KD_LABEL} \({kd_id}\)"):
        _watched_sweep(tmp_path, signal.SIGKILL)
    assert not store.load_records(tmp_path)  # nothing half-written
    assert store.checkpoint_path(tmp_path, kd_id).exists()
    summary = Sweep(
        request(tmp_path, methods=["kd"], threads=1, backend="submitit-local"), progress=quiet
    ).run()
    assert summary.done == [kd_id]
    logs = "".join(log.read_text() for log in (tmp_path / "slurm-logs").glob("*_0_log.err"))
    assert f"resuming {KD_LABEL} after epoch 1" in logs
    assert_same_records(records_by_method(tmp_path), {("kd", False): pool_records[("kd", False)]})


def test_backend_slurm_without_slurm_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever the machine has
    argv = ["run", "--backend", "slurm", "--slurm-partition", "gpu", "--dataset", "synthetic"]
    argv += ["--methods", "student", "--pairs", "resnet14:resnet8", "--out", str(tmp_path / "store")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress lines (runs planned) may come first
    assert [line for line in lines if line.startswith("kdbench: error:")] == lines[-1:], lines
    assert re.match(r"kdbench: error: --backend slurm needs SLURM, .*sbatch", lines[-1])
    assert not store.load_records(tmp_path / "store")


@pytest.fixture(scope="module")
def joined_ray():
    """A running Ray (2 CPUs) that the back-ends below join rather than start."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_failing_ray_task_names_its_unit_and_a_ray_it_did_not_start_stays_up(
    tmp_path, pool_records, joined_ray
):
    from kdbench.core.store import CheckpointError
    from kdbench.execution.backends.ray import RayBackend

    kd = RunSpec.from_dict(pool_records[("kd", False)]["spec"])
    backend = RayBackend(WorkerSettings(out=tmp_path, threads=1))
    failed = rf"Ray task failed while training {KD_LABEL} \({kd.run_id}\)"
    with pytest.raises(RuntimeError, match=failed), backend:
        backend.submit(RunUnit((kd,), teacher_path=None))  # a bug: a kd unit without its teacher
        list(backend.outcomes())
    assert ray.is_initialized() and not backend.in_flight
    # bad input a worker finds comes back as itself (the command line prints it as one line)
    with (
        pytest.raises(CheckpointError, match="does not exist"),
        RayBackend(WorkerSettings(out=tmp_path, threads=1)) as backend,
    ):
        backend.submit(RunUnit((kd,), teacher_path=str(tmp_path / "missing.pt")))
        list(backend.outcomes())
    assert ray.is_initialized()


def test_cancel_kills_the_ray_task_and_frees_its_run(tmp_path, pool_records, joined_ray):
    from kdbench.execution.backends.ray import RayBackend

    student = RunSpec.from_dict(pool_records[("student", False)]["spec"])
    long = replace(student, recipe=replace(student.recipe, epochs=200))
    backend = RayBackend(WorkerSettings(out=tmp_path, threads=1))
    backend.submit(RunUnit((long,)))
    deadline = time.monotonic() + 60
    while not store.checkpoint_path(tmp_path, long.run_id).exists():  # it is training
        assert time.monotonic() < deadline, "the task never started training"
        time.sleep(0.05)
    backend.cancel()
    backend.close()
    with open(tmp_path / "claims" / f"{long.run_id}.lock", "a+b") as claim:
        while True:  # the killed task's claim is freed (its process is gone), well before 200 epochs
            try:
                fcntl.flock(claim.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the cancelled task still holds its run"
                time.sleep(0.05)
    assert not store.load_records(tmp_path) and ray.is_initialized()
