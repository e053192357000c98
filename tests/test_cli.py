"""The command line: bad input gives one clear line and a non-zero exit; a small run + report works."""

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
    code, board, _ = run_cli(
        capsys, "run", "--methods", "kd,crd", "--vam", "on", "--teacher-epochs", "1", *common
    )
    assert code == 0 and "kd +VAM" in board and "crd +VAM" in board
    code, board, _ = run_cli(capsys, "report", "--out", out, "--format", "markdown", "--plot", out)
    assert code == 0 and "kd +VAM" in board and "crd +VAM" in board
    assert (tmp_path / "accuracy_vs_overhead.png").stat().st_size > 0
    baseline = tmp_path / "baseline.json"
    assert run_cli(capsys, "check", "--out", out, "--baseline", str(baseline), "--write-baseline")[0] == 0
    assert run_cli(capsys, "check", "--out", out, "--baseline", str(baseline))[0] == 0
    # the same command again: every run is a cache hit
    code, _, err = run_cli(
        capsys, "run", "--methods", "kd,crd", "--vam", "on", "--teacher-epochs", "1", *common
    )
    assert code == 0 and "0 trained, 2 cached" in err
