"""The command line: bad input gives one clear line and a non-zero exit; a small run + report works."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--methods", "kdd"], "unknown method 'kdd'. Did you mean 'kd'?"),
        (["run", "--methods", "kd+crd"], "only NAME+kd composes"),
        (["run", "--pairs", "resnet566:resnet20"], "unknown model 'resnet566'. Did you mean 'resnet56'?"),
        (["run", "--pairs", "resnet56"], "bad pair 'resnet56'"),
        (["run", "--dataset", "cifar1000"], "unknown dataset 'cifar1000'. Did you mean 'cifar100'?"),
        (["run", "--preset", "quik"], "unknown preset 'quik'. Did you mean 'quick'?"),
        (["run", "--hp", "kd.temprature=2"], "method 'kd' has no hyper-parameter 'temprature'"),
        (["run", "--hp", "kdtemperature"], "bad --hp 'kdtemperature'"),
    ],
)
def test_bad_names_exit_2_with_one_line(capsys, tmp_path, argv, expected):
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:") and expected in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_missing_dataset_says_how_to_get_it(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--dataset", "cifar100", "--data-root", str(tmp_path / "none"))
    assert code == 2 and "CIFAR-100 not found" in err and "--data-root" in err


def test_missing_teacher_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "run", "--dataset", "synthetic", "--teacher", str(tmp_path / "no.pt"), "--out", str(tmp_path)
    )
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("what", ["methods", "models", "datasets", "pairs", "presets"])
def test_list(capsys, what):
    code, out, _ = run_cli(capsys, "list", what)
    assert code == 0 and out.strip()


def test_list_methods_has_at_least_17(capsys):
    _, out, _ = run_cli(capsys, "list", "methods")
    names = [line.split()[0] for line in out.strip().splitlines() if not line.startswith("NAME")]
    assert len(names) >= 17 and {"kd", "crd", "dkd", "fitnet", "at", "student"} <= set(names)


def test_report_without_records(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", "--out", str(tmp_path))
    assert code == 1 and "no run records" in err


def test_small_run_then_report_and_check(capsys, tmp_path):
    out = str(tmp_path)
    common = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "1", "--out", out]
    common += ["--seeds", "3", "--train-subset", "256"]  # a regression baseline needs >= 3 seeds per cell
    code, board, _ = run_cli(
        capsys, "run", "--methods", "kd,crd", "--vam", "on", "--teacher-epochs", "1", *common
    )
    assert code == 0 and "kd +VAM" in board and "crd +VAM" in board
    code, board, _ = run_cli(capsys, "report", "--out", out, "--format", "markdown", "--plot", out)
    assert code == 0 and "kd +VAM" in board and "crd +VAM" in board
    assert (tmp_path / "accuracy_vs_overhead.png").stat().st_size > 0
    # `kdbench report | head -1`: a board smaller than stdout's buffer meets the closed pipe when flushed
    for buffered in (True, False):
        _assert_quiet(_into_a_pipe_whose_reader_left("report", "--out", out, buffered=buffered))
    baseline = tmp_path / "baseline.json"
    assert run_cli(capsys, "check", "--out", out, "--baseline", str(baseline), "--write-baseline")[0] == 0
    assert run_cli(capsys, "check", "--out", out, "--baseline", str(baseline))[0] == 0
    # the same command again: every run is a cache hit
    code, _, err = run_cli(
        capsys, "run", "--methods", "kd,crd", "--vam", "on", "--teacher-epochs", "1", *common
    )
    assert code == 0 and "0 trained, 6 cached" in err


# -- interrupting a pooled run (real processes and signals) ---------------------------------------


def _session_processes(session_id: int) -> list[int]:
    """Live (not zombie) pids of a session, from /proc (Linux)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _start_pooled_run(out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "kdbench", "run", "--methods", "student,kd", "--vam", "both"]
    argv += ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "4"]
    argv += ["--teacher-epochs", "1", "--jobs", "2", "--out", str(out)]
    argv += ["--train-subset", "256", "--time-probe", "off"]  # what is tested is the pool's processes
    # a session of its own: the test can signal the whole group, as a terminal's Ctrl-C does; SIGINT
    # at its default, as at a terminal (a shell's background job, e.g. a CI runner's, inherits it ignored)
    return subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_line(process: subprocess.Popen, fragment: str) -> list[str]:
    lines = []
    for line in process.stderr:
        lines.append(line)
        if fragment in line:
            return lines
    raise AssertionError(f"the run ended before printing {fragment!r}:\n{''.join(lines)}")


def _assert_whole_records(out: Path) -> int:
    records = list((out / "runs").glob("*.json"))
    for path in records:
        assert json.loads(path.read_text())["status"] == "done"
    return len(records)


def _wait_until_gone(session_id: int) -> None:
    deadline = time.monotonic() + 20
    while _session_processes(session_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session_processes(session_id), "worker processes outlived the run"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_pool_and_the_same_command_resumes(tmp_path, capsys):
    process = _start_pooled_run(tmp_path)
    _wait_for_line(process, "kd resnet14→resnet8 synthetic seed=0 epoch 1/4")
    os.killpg(process.pid, signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130 and "re-run the same command to resume" in rest
    _wait_until_gone(process.pid)
    finished = _assert_whole_records(tmp_path)
    assert finished < 5  # teacher + 4 runs: the interrupt came mid-sweep
    again = _start_pooled_run(tmp_path)
    output = again.stderr.read()
    assert again.wait(timeout=300) == 0, output
    assert "resuming" in output and _assert_whole_records(tmp_path) == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_takes_its_workers_down(tmp_path):
    process = _start_pooled_run(tmp_path)
    _wait_for_line(process, "kd resnet14→resnet8 synthetic seed=0 epoch 1/4")
    process.kill()  # SIGKILL: no handler runs in the parent
    process.wait(timeout=30)
    _wait_until_gone(process.pid)
    _assert_whole_records(tmp_path)
    again = _start_pooled_run(tmp_path)
    output = again.stderr.read()
    assert again.wait(timeout=300) == 0, output
    assert _assert_whole_records(tmp_path) == 5


def _into_a_pipe_whose_reader_left(*argv: str, buffered: bool = True) -> subprocess.CompletedProcess:
    """`kdbench ARGV | head -1` once head has exited: the pipe's read end is closed before kdbench writes,
    so every write gets EPIPE, deterministically. `buffered` (a user's shell): stdout keeps what fits in
    its buffer until flushed; else (PYTHONUNBUFFERED=1) each print writes at once."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env.update({} if buffered else {"PYTHONUNBUFFERED": "1"})
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "kdbench", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        os.close(write_end)


def _assert_quiet(finished: subprocess.CompletedProcess) -> None:
    """Exit 0 and nothing on stderr: no traceback, no 'Exception ignored' from the flush at shutdown."""
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == "", finished.stderr


@pytest.mark.parametrize("buffered", [True, False])
def test_a_reader_that_leaves_early_ends_the_output_quietly(buffered):
    """`kdbench list methods | head -1` (BrokenPipeError is an OSError, so its handler must come before
    OSError's; a buffered stdout meets the closed pipe when main flushes it)."""
    _assert_quiet(_into_a_pipe_whose_reader_left("list", "methods", "--verbose", buffered=buffered))


@pytest.mark.parametrize(("flag", "expected"), [("0", None), ("300", 300)])
def test_train_subset_0_trains_on_every_image_over_a_presets_subset(flag, expected):
    """`--train-subset 0` means all images: it must override the quick preset's 6,000, not vanish as an
    unset flag does."""
    from kdbench.cli import _resolved_config, build_parser

    args = build_parser().parse_args(["run", "--train-subset", flag])
    resolved = _resolved_config(args)
    assert resolved["recipe"]["train_subset"] == expected
    assert resolved["teacher_recipe"]["train_subset"] == expected
