"""The CLI's self-description (--version, examples, defaults, list --verbose) and the Python API."""

import io
import subprocess
import sys

import pandas as pd
import pytest

import kdbench
from kdbench.cli import EXAMPLES, build_parser, main
from kdbench.core.errors import ConfigError
from kdbench.core.registries import METHODS


def _help(*command: str) -> str:
    parser = build_parser()
    for name in command:
        parser = next(
            action.choices[name]
            for action in parser._actions
            if isinstance(action, type(parser._subparsers._actions[-1]))
        )
    return parser.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"kdbench {kdbench.__version__}"


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_command_shows_examples_and_its_defaults(command):
    text = _help(command) if command != "teacher" else _help("teacher", "train")
    assert "examples:\n  kdbench " + command in text
    if command == "report":
        assert "(default: terminal)" in text and "(default: kdbench-results)" in text


def test_run_help_shows_every_presets_values():
    text = _help("run")
    for preset, fragment in [
        ("quick", "--epochs 3"),
        ("ci", "--train-subset 1500"),
        ("paper", "--epochs 240"),
    ]:
        (line,) = [line for line in text.splitlines() if line.startswith(f"  {preset}: ")]
        assert fragment in line
    assert "--threads 1" in text


def test_list_methods_verbose_shows_citation_and_hyperparameters(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    for name in (name for name in METHODS.module_dict if "+" not in name):
        assert f"hyper-parameters (--hp {name}.KEY=VALUE)" in out
    assert "paper: KD: Hinton" in out and "temperature=4.0" in out
    # each method says whether it fuses, as its class does (kd does, crd does not, tfkd needs no teacher)
    lines = out.splitlines()

    def facts(name: str) -> str:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        return next(line for line in lines[start + 1 :] if "fuses under --fuse on" in line)

    assert facts("kd").endswith("fuses under --fuse on: yes") and "needs a teacher" in facts("kd")
    assert facts("crd").endswith("fuses under --fuse on: no")
    assert "needs no teacher" in facts("tfkd") and "extra views strong" in facts("mlkd")


def test_list_models_shows_each_models_aliases(capsys):
    from kdbench.models import ALIASES

    assert main(["list", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for alias, name in ALIASES.items():
        (line,) = [line for line in lines if line.split()[0] == name]
        assert alias in line.partition("(alias ")[2]
    assert "timm:<any timm model name>" in lines


def test_teacher_train_takes_only_its_flags(capsys):
    assert pytest.raises(SystemExit, main, ["teacher", "train", "resnet8", "--methods", "kd"]).value.code == 2
    assert "unrecognized arguments: --methods kd" in capsys.readouterr().err


def test_import_kdbench_is_light_and_exposes_the_api():
    code = "import sys, kdbench; print('torch' in sys.modules, callable(kdbench.run))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdbench.nope  # noqa: B018


def test_the_python_api_runs_reports_and_loads(tmp_path):
    options = dict(
        dataset="synthetic",
        pairs="resnet14:resnet8",
        methods=["student", "kd"],
        vam="off",
        seeds=1,
        recipe={"epochs": 1, "train_subset": 128},
        teacher_recipe={"epochs": 1, "train_subset": 128},
        hp={"kd.temperature": [2, 4]},
        jobs=1,
        out=str(tmp_path),
    )
    records = kdbench.run(progress=lambda line: None, **options)
    assert sorted(r["spec"]["method"] for r in records) == ["kd", "kd", "student"]
    assert all(r["status"] == "done" for r in records)
    again = kdbench.run(progress=lambda line: None, **options)  # nothing new: the same records
    assert [r["run_id"] for r in again] == [r["run_id"] for r in records]
    assert len(kdbench.load_records(tmp_path)) == 3 and len(kdbench.load_records(tmp_path, kind=None)) == 4
    table = kdbench.report(tmp_path, format="markdown", published=False)
    assert "kd (temperature=2.0)" in table and "kd (temperature=4.0)" in table
    text = kdbench.report(records, format="csv", published=False)  # tidy rows, no comment lines
    assert text.startswith("dataset,teacher,student,method,wrappers,vam,row,pair,epochs,")
    frame = kdbench.leaderboard(tmp_path, published=False)  # the same rows, as a DataFrame
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["row"]) == list(pd.read_csv(io.StringIO(text))["row"])
    assert set(frame.loc[frame["method"] == "kd", "hp.temperature"]) == {2.0, 4.0}
    assert "last epoch" in frame.attrs["caption"]
    runs = kdbench.runs_frame(tmp_path)  # the per-run form: one row per record
    assert sorted(runs["run_id"]) == sorted(record["run_id"] for record in records)
    assert {"dataset", "teacher", "student", "method", "seed", "last_top1", "ece"} <= set(runs.columns)


def test_dir_lists_the_api():
    assert {"run", "leaderboard", "runs_frame", "report", "load_records", "__version__"} <= set(dir(kdbench))


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"epoch": 3, "methodz": "kd"}, "unknown keyword(s): epoch, methodz; kdbench.run takes "),
        ({"methods": []}, "keyword methods is empty"),
    ],
)
def test_the_api_names_a_wrong_keyword_as_a_keyword(tmp_path, keywords, message):
    with pytest.raises(ConfigError) as raised:
        kdbench.run(dataset="synthetic", out=str(tmp_path), **keywords)
    assert str(raised.value).startswith(message) and "flag" not in str(raised.value)
    assert not (tmp_path / "runs").exists()
