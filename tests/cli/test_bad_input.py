"""The bad-input battery: every case exits with a one-line error (exit 2) that names the value,
flag or file at fault, loses no finished result, and no code from a store file ever runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.errors import ConfigError
from kdbench.core.spec import Recipe
from kdbench.wrappers.vam import VAMConfig

TINY = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "1", "--teacher-epochs", "1"]
TINY += ["--train-subset", "128", "--vam", "off", "--jobs", "1"]
# no time probe: it would take three times these runs' two steps, and no test of TINY reads time / student
TINY += ["--time-probe", "off"]


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse refuses a flag before main's body runs
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """Exit 2, and the output ends with one `kdbench: error:` line (progress lines may precede it)."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines and lines[-1].startswith("kdbench: error:") and "Traceback" not in err, err
    assert sum(line.startswith("kdbench: error:") for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


# -- values out of range: refused where they enter, before anything trains -----------------------
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--seeds", "0"),
        ("--batch-size", "0"),
        ("--lr", "0"),
        ("--teacher-epochs", "0"),
        ("--vam-groups", "0"),
        ("--train-subset", "-5"),
        ("--seeds", "-1"),
        ("--epochs", "-1"),
        ("--batch-size", "-1"),
        ("--vam-groups", "-2"),
        ("--val-split", "1.5"),
        ("--lr", "nan"),
        ("--threads", "0"),
        ("--jobs", "-3"),
        ("--epochs", "two"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_flag(capsys, tmp_path, flag, value):
    code, _, err = run_cli(capsys, "run", *TINY, flag, value, "--out", str(tmp_path))
    assert_one_line_error(code, err, f"argument {flag}", value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Recipe(epochs=0), "epochs"),
        (lambda: Recipe.from_dict({"batch_size": -1}), "batch-size"),
        (lambda: Recipe.from_dict({"train_subset": -5}), "train-subset"),
        (lambda: Recipe.from_dict({"lr": 0.0}), "lr"),
        (lambda: Recipe().with_epochs(-1), "epochs"),
        (lambda: VAMConfig(groups=0), "vam-groups"),
        (lambda: VAMConfig.from_dict({"lr_scale": -1.0}), "vam-lr-scale"),
    ],
)
def test_the_same_values_from_a_preset_or_a_record_are_refused(build, named):
    with pytest.raises(ConfigError, match=named):
        build()


# -- hyper-parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("kd.temperature=abc", "kd.temperature='abc': takes a number"),
        ("kd.logit_std=maybe", "kd.logit_std='maybe': takes true or false"),
        ("kd.temperature=true", "kd.temperature='true': takes a number"),
        ("crd.nce_k=2.5", "crd.nce_k='2.5': takes a whole number"),
        (".temperature=2", "bad --hp '.temperature=2'"),
    ],
)
def test_a_bad_hyper_parameter_names_its_key_and_value(capsys, tmp_path, item, fragment):
    method = item.partition(".")[0] or "kd"
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", method, "--hp", item, "--out", str(tmp_path))
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("given", "stored"), [("0", False), ("no", False), ("1", True), ("YES", True)])
def test_boolean_hyper_parameters_are_stored_as_booleans(given, stored):
    from kdbench.methods.base import method_class

    assert method_class("kd").resolve_hp({"logit_std": given})["logit_std"] is stored


# -- devices, formats, flags a command does not take ----------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:7"])
def test_a_device_this_machine_lacks_is_refused(capsys, tmp_path, device):
    if device != "gpu" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli(capsys, "run", *TINY, "--device", device, "--out", str(tmp_path))
    assert_one_line_error(code, err, "argument --device", device)


@pytest.mark.parametrize("flag", [["--methods", "kd"], ["--vam", "on"], ["--hp", "kd.temperature=2"]])
def test_teacher_train_refuses_flags_it_would_ignore(capsys, tmp_path, flag):
    code, _, err = run_cli(capsys, "teacher", "train", "resnet8", *flag, "--out", str(tmp_path))
    assert_one_line_error(code, err, "unrecognized arguments", flag[0])


# -- the results store -----------------------------------------------------------------------------------
def test_an_out_that_is_a_file_is_refused(capsys, tmp_path):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("mine")
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", "student", "--out", str(not_a_folder))
    assert_one_line_error(code, err, f"--out {not_a_folder}", "cannot hold results")
    assert not_a_folder.read_text() == "mine"


def test_a_read_only_out_is_refused(capsys, tmp_path):
    if os.geteuid() == 0:
        read_only = Path("/proc/kdbench-results")  # root writes through permission bits; /proc it cannot
    else:
        read_only = tmp_path / "locked"
        read_only.mkdir(mode=0o500)
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", "student", "--out", str(read_only))
    assert_one_line_error(code, err, f"--out {read_only}", "cannot hold results")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[1, 2]", "is not a run record (a JSON list)"),
        (b'{"schema": 1}', "is not a run record (no run_id, kind, spec, status, environment)"),
        (bytes(range(256)) * 4, "cannot read run record"),
        (
            b'{"schema": 7, "run_id": "x", "kind": "distill", "spec": {}, "status": "done", "environment": {}}',
            "has schema 7",
        ),
    ],
)
def test_a_file_in_runs_that_is_not_a_record_is_named(capsys, tmp_path, content, fragment):
    junk = tmp_path / "runs" / "junk.json"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(content)
    code, _, err = run_cli(capsys, "report", "--out", str(tmp_path))
    assert_one_line_error(code, err, str(junk), fragment)


def test_run_stops_at_a_malformed_record_of_its_own_spec_naming_it(capsys, tmp_path):
    from kdbench.cli import _request_from_args, build_parser
    from kdbench.execution.sweep import fit_to_data, specs_for_pair

    args = build_parser().parse_args(["run", *TINY, "--methods", "student", "--out", str(tmp_path)])
    request = fit_to_data(_request_from_args(args), lambda line: None)  # the data's identity, as `run` plans
    (spec,) = specs_for_pair(request, request.pairs[0], None)
    bad = store.record_path(tmp_path, spec.run_id)
    bad.parent.mkdir(parents=True)
    bad.write_text('{"schema": 1}')
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", "student", "--out", str(tmp_path))
    assert_one_line_error(code, err, str(bad))


# -- files that would run code -----------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_teacher_checkpoint_is_refused_and_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "teacher.pt"
    torch.save({"model": _RunsCode(marker)}, evil)
    code, _, err = run_cli(
        capsys, "run", *TINY, "--methods", "kd", "--teacher", str(evil), "--out", str(tmp_path / "s")
    )
    assert_one_line_error(code, err, str(evil), "unreadable")
    assert not marker.exists()


def test_a_malicious_cached_teacher_is_refused_and_runs_nothing(capsys, tmp_path):
    """A teacher file swapped in the cache, its record's SHA-256 updated to match: still only weights load."""
    code, _, err = run_cli(
        capsys,
        "teacher",
        "train",
        "resnet14",
        "--dataset",
        "synthetic",
        "--teacher-epochs",
        "1",
        "--train-subset",
        "128",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    (teacher_file,) = (tmp_path / "teachers").glob("*.pt")
    marker = tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker)}, teacher_file)
    (record_file,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    from kdbench.training.teachers import sha256_of

    record["checkpoint"]["sha256"] = sha256_of(teacher_file)
    record_file.write_text(json.dumps(record))
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", "kd", "--out", str(tmp_path))
    assert_one_line_error(code, err, str(teacher_file), "unreadable")
    assert not marker.exists()


# -- two processes on one store ------------------------------------------------------------------------
def test_two_runs_on_one_store_train_each_spec_once(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "kdbench",
        "run",
        *TINY,
        "--methods",
        "student,kd",
        "--out",
        str(tmp_path),
    ]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    logs = [first.communicate(timeout=300)[1], second.communicate(timeout=300)[1]]
    assert first.returncode == 0 and second.returncode == 0, logs
    both = "".join(logs)
    assert both.count("training teacher") == 1, both
    records = store.load_records(tmp_path)
    assert len(records) == 2 and all(r["status"] == "done" for r in records)
    for record in records:  # trained by exactly one of the two processes
        assert (
            both.count(f"[{record['run_id']}] {record['spec']['method']} ")
            and both.count(f"[{record['run_id']}]") >= 1
        )
        assert (
            sum(f"[{record['run_id']}] " in line and ": done, top-1" in line for line in both.splitlines())
            == 1
        )


# -- the regression gate's inputs (exit 2 = unusable input, never confused with a regression) -----
def test_check_refuses_unusable_input_with_exit_2(capsys, tmp_path):
    baseline = tmp_path / "baseline.json"
    code, _, err = run_cli(capsys, "check", "--baseline", str(baseline), "--out", str(tmp_path))
    assert_one_line_error(code, err, str(baseline), "not found")
    baseline.write_text("[]")
    code, _, err = run_cli(capsys, "check", "--baseline", str(baseline), "--out", str(tmp_path))
    assert_one_line_error(code, err, str(baseline), "is not a kdbench-baseline/2 file")
    code, _, err = run_cli(
        capsys,
        "check",
        "--baseline",
        str(tmp_path / "new.json"),
        "--write-baseline",
        "--out",
        str(tmp_path / "nothing"),
    )
    assert_one_line_error(code, err, "would be empty; nothing written")
    assert not (tmp_path / "new.json").exists()


def test_an_unknown_format_is_refused_before_training(capsys, tmp_path):
    from kdbench.reporting import FORMATS

    code, _, err = run_cli(capsys, "run", *TINY, "--format", "xlsx", "--out", str(tmp_path))
    assert_one_line_error(code, err, "argument --format", "xlsx")
    assert not (tmp_path / "runs").exists()
    from kdbench.cli import build_parser

    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    (format_action,) = [a for a in run_parser._actions if a.dest == "format"]
    assert tuple(format_action.choices) == tuple(FORMATS)  # the command line offers what the report renders


def test_a_preset_that_names_no_seed_is_refused(capsys, tmp_path, monkeypatch):
    from kdbench.core import catalog

    quick = catalog.preset("quick")
    monkeypatch.setitem(catalog.presets(), "quick", {**quick, "seeds": 0})
    code, _, err = run_cli(capsys, "run", *TINY, "--out", str(tmp_path))
    assert_one_line_error(code, err, "nothing to train")
