"""Run logs and trackers: TensorBoard event files and an MLflow file store hold each epoch's scalars,
equal to the record's; logs/<run_id>.txt holds the run's own lines; a bar shows on a terminal."""

import os
import pty
import select
import subprocess
import sys

import pytest

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.spec import RunSpec
from kdbench.core.trackers import tracker_run_name

TINY = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "2", "--teacher-epochs", "1"]
TINY += ["--train-subset", "256", "--vam", "off", "--format", "csv"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """student alone and kd + at as one cohort (their epochs interleave), logged to both trackers."""
    out = tmp_path_factory.mktemp("store")
    args = ["run", *TINY, "--methods", "student,kd,at", "--jobs", "1", "--log", "tensorboard,mlflow"]
    args += ["--time-probe", "off"]  # the trackers log the epochs; the probe times none of them
    assert main([*args, "--out", str(out)]) == 0
    return out, {r["spec"]["method"]: r for r in store.load_records(out)}


def _tracker_dir(out, backend: str, record: dict):
    return out / "trackers" / backend / tracker_run_name(RunSpec.from_dict(record["spec"]))


def test_tracker_runs_are_named_by_method_pair_dataset_and_seed(logged):
    out, records = logged
    names = sorted(path.name for path in (out / "trackers" / "tensorboard").iterdir())
    assert names == sorted(
        f"{name}_{records[method]['run_id']}"
        for method, name in (
            ("at", "at_resnet14-resnet8_synthetic_seed0"),
            ("kd", "kd_resnet14-resnet8_synthetic_seed0"),
            ("student", "student_resnet8_synthetic_seed0"),
        )
    )


def test_a_teachers_training_is_logged_as_the_teachers(tmp_path, capsys):
    assert (
        main(
            ["teacher", "train", "resnet8", "--dataset", "synthetic", "--teacher-epochs", "1"]
            + ["--train-subset", "128", "--out", str(tmp_path)]
        )
        == 0
    )
    printed = capsys.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if "epoch 1/1" in line]
    assert lines and all("] teacher resnet8 synthetic seed=0 epoch 1/1" in line for line in lines)


def test_tensorboard_event_files_hold_each_epochs_scalars(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, records = logged
    for method in ("student", "kd", "at"):
        record = records[method]
        events = EventAccumulator(str(_tracker_dir(out, "tensorboard", record)))
        events.Reload()
        losses = [(event.step, event.value) for event in events.Scalars("train_loss")]
        expected = [(entry["epoch"], entry["train_loss"]) for entry in record["history"]]
        assert [step for step, _ in losses] == [step for step, _ in expected]
        assert [value for _, value in losses] == pytest.approx([value for _, value in expected], rel=1e-6)
        assert events.Scalars("test_top1")[-1].value == pytest.approx(record["metrics"]["last_top1"])
    assert (
        "loss/at"
        in EventAccumulator(str(_tracker_dir(out, "tensorboard", records["at"]))).Reload().Tags()["scalars"]
    )


def test_an_mlflow_file_store_holds_each_run_with_its_spec(logged):
    mlflow = pytest.importorskip("mlflow")
    out, records = logged
    for method in ("kd", "at"):  # cohort members: each its own MLflow run, never mixed
        record = records[method]
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        client = mlflow.tracking.MlflowClient(f"file://{_tracker_dir(out, 'mlflow', record)}")
        (run,) = client.search_runs([client.get_experiment_by_name("kdbench").experiment_id])
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [
            (entry["epoch"], pytest.approx(entry["train_loss"])) for entry in record["history"]
        ]
        assert run.data.params["method"] == method and run.data.params["run_id"] == record["run_id"]


def test_each_run_logs_its_own_lines(logged):
    out, records = logged
    for method, record in records.items():
        lines = (out / "logs" / f"{record['run_id']}.txt").read_text().splitlines()
        assert len(lines) == record["spec"]["recipe"]["epochs"] and all(
            line.startswith(f"[{record['run_id']}] {method}") for line in lines
        )


def test_an_unknown_or_uninstalled_tracker_is_one_line(tmp_path, capsys):
    assert main(["run", *TINY, "--methods", "student", "--log", "tensorbored", "--out", str(tmp_path)]) == 2
    assert "unknown tracker 'tensorbored'" in capsys.readouterr().err
    if sys.modules.get("aim") is None and subprocess.run([sys.executable, "-c", "import aim"]).returncode:
        assert main(["run", *TINY, "--methods", "student", "--log", "aim", "--out", str(tmp_path)]) == 2
        assert "pip install aim" in capsys.readouterr().err


def _on_a_terminal(args: list[str]) -> str:
    """kdbench's output on a fresh pseudo-terminal (it reports no size, as many do)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdbench", *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    output = b""
    while select.select([master], [], [], 300)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=60) == 0, output[-2000:]
    return output.decode(errors="replace")


@pytest.mark.slow
def test_a_progress_bar_shows_on_a_terminal(tmp_path):
    base = [*TINY[:-2], "--methods", "student,kd", "--cohort", "off", "--time-probe", "off"]
    in_process = _on_a_terminal(["run", *base, "--jobs", "1", "--out", str(tmp_path / "a")])
    assert "step/s" in in_process or "s/step" in in_process  # the engine's epoch bar
    pooled = _on_a_terminal(["run", *base, "--jobs", "2", "--out", str(tmp_path / "b")])
    assert "runs: 100%" in pooled  # the sweep's bar of finished runs
