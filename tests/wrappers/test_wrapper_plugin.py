"""A student wrapper from a plugin file, with no edit outside that file: `kdbench run --plugin FILE
--wrapper NAME:KEY=VALUE` trains with it, `kdbench report` shows its rows and its Δ (in a process that
never loaded the plugin, too), a second run finds its records, an interrupted run resumes from its
checkpoint to the same result, and runs without it keep their run ids."""

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from test_bad_input import TINY, assert_one_line_error, run_cli
from test_sweep import InterruptAfterFirstEpoch, quiet, request

from kdbench.core import store
from kdbench.core.spec import RunSpec
from kdbench.execution import plugins
from kdbench.execution.sweep import Sweep
from kdbench.wrappers import wrapper_configs

TOY_WRAPPER = '''
"""A toy student wrapper: a learned scale on the student's classifier weights, folded away for deployment."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from kdbench.core.spec import require_number
from kdbench.wrappers.base import StudentWrapper, register_wrapper


@dataclass(frozen=True)
class ToyConfig:
    scale: float = 1.0  # the classifier's initial weight scale
    weight: float = 0.01  # of the penalty on the log of the scale

    def __post_init__(self):
        require_number(self.scale, "toy scale", above=0.0)
        require_number(self.weight, "toy weight", low=0.0)


class LogScale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, weight):
        return weight * self.log_scale.exp()


def _classifier(student):
    return [module for module in student.modules() if isinstance(module, nn.Linear)][-1]


@register_wrapper
class Toy(StudentWrapper):
    name = "toy"
    config_class = ToyConfig

    def wrap(self, student):
        classifier = _classifier(student)
        scale = LogScale(self.config.scale).to(classifier.weight.device)
        parametrize.register_parametrization(classifier, "weight", scale)

    def _log_scale(self, student):
        return _classifier(student).parametrizations.weight[0].log_scale

    def parameters(self, student):
        return [self._log_scale(student)]

    def loss_terms(self, student):
        return {"toy_penalty": self.config.weight * self._log_scale(student).pow(2)}

    def export(self, student, plain):
        state = {k: v for k, v in student.state_dict().items() if ".parametrizations." not in k}
        for name, module in student.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                state[f"{name}.weight"] = module.weight.detach().clone()
        plain.load_state_dict(state)
        return plain

    def summary(self, student):
        return {"logit_scale": float(self._log_scale(student).detach().exp())}
'''
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _forget_plugins():
    """What a test's plugins registered is forgotten after it (the registries are per process)."""
    yield
    for plugin in list(plugins._plugins.values()):
        plugins._unload(plugin)


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "toy_wrapper.py"
    path.write_text(TOY_WRAPPER)
    return path


def _records(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (out / "runs").glob("*.json")}


def test_a_plugin_wrapper_runs_reports_and_is_found_again(capsys, tmp_path, plugin):
    out = tmp_path / "store"
    common = (*TINY, "--methods", "student,kd", "--plugin", str(plugin), "--out", str(out), "--format", "csv")
    code, _, err = run_cli(capsys, "run", *common)
    assert code == 0, err
    without = _records(out)
    code, _, err = run_cli(capsys, "run", *common, "--wrapper", "toy:scale=2,weight=0.5")
    assert code == 0, err

    toy = {json.loads(text)["spec"]["method"]: json.loads(text) for name, text in _records(out).items()
           if name not in without and json.loads(text)["kind"] == "distill"}  # fmt: skip
    assert set(toy) == {"student", "kd"}
    for record in toy.values():
        assert record["spec"]["toy"] == {"scale": 2.0, "weight": 0.5} and record["spec"]["vam"] is None
        assert record["spec"]["plugin_sha256"] == {
            "toy_wrapper.py": plugins._plugins["toy_wrapper.py"].sha256
        }
        assert set(record["toy"]) == {"logit_scale"} and record["toy"]["logit_scale"] > 0
        assert "toy_penalty" in record["history"][0]["loss_terms"]
        assert record["overhead"]["extra_trainable_params"] >= 1  # the scale
        assert record["overhead"]["export_max_abs_error"] < 1e-4  # folded into the plain classifier
    for (
        text
    ) in without.values():  # runs without it hold no key of it, nor do their records, and keep their ids
        spec = json.loads(text)["spec"]
        assert "toy" not in spec and RunSpec.from_dict(spec).run_id == json.loads(text)["run_id"]
        assert "toy" not in json.loads(text) and "vam" in json.loads(text)

    code, printed, err = run_cli(capsys, "report", "--out", str(out), "--format", "csv")
    assert code == 0, err
    cells = pd.read_csv(io.StringIO(printed), comment="#").set_index("row")
    assert {"student +TOY", "kd +TOY"} <= set(cells.index) and cells.loc["kd +TOY", "toy"]
    for row, plain in (("student +TOY", "student"), ("kd +TOY", "kd")):
        delta = cells.loc[row, "mean"] - cells.loc[plain, "mean"]
        assert cells.loc[row, "toy_delta"] == pytest.approx(delta)
        assert pd.isna(cells.loc[plain, "toy_delta"])

    # a fresh process reads the store without running the plugin: rows and Δ alike
    shown = subprocess.run(
        [sys.executable, "-m", "kdbench", "report", "--out", str(out), "--format", "markdown"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    assert "| kd +TOY " in shown and "ΔTOY" in shown and "ΔTOY: with TOY − without it" in shown

    before = _records(out)
    code, _, err = run_cli(capsys, "run", *common, "--wrapper", "toy:scale=2,weight=0.5")
    assert code == 0 and "2 cached" in err, err
    assert _records(out) == before  # found again, nothing trained or rewritten


def test_an_interrupted_plugin_wrapper_run_resumes_to_the_same_result(tmp_path, plugin):
    plugins.load([str(plugin)])
    toy = replace(
        request(tmp_path, methods=["kd"]),
        wrappers=wrapper_configs({"toy": {"scale": 2.0}}),
        plugins=(str(plugin),),
    )
    Sweep(replace(toy, out=tmp_path / "whole"), progress=quiet).run()
    cut = replace(toy, out=tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        Sweep(cut, progress=InterruptAfterFirstEpoch()).run()
    assert list((tmp_path / "cut" / "checkpoints").glob("*.pt"))
    lines = []
    Sweep(cut, progress=lines.append).run()
    assert any("resuming" in line for line in lines)
    whole, resumed = (
        next(r for r in store.load_records(tmp_path / out) if r["spec"]["method"] == "kd")
        for out in ("whole", "cut")
    )
    assert resumed["spec"]["toy"] == {"scale": 2.0, "weight": 0.01}
    assert resumed["metrics"] == whole["metrics"] and resumed["toy"] == whole["toy"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]


@pytest.mark.parametrize(
    ("flag", "fragments"),
    [
        ("toy:scale=0", ["toy scale must be a number > 0.0, got 0"]),
        ("toy:sclae=2", ["unknown wrappers.toy field(s) ['sclae']"]),
        ("toy:scale", ["bad --wrapper 'toy:scale'"]),
        ("tyo", ["unknown student wrapper 'tyo'", "Did you mean 'toy'?"]),
    ],
    ids=["out-of-range", "unknown-field", "no-value", "unknown-name"],
)
def test_a_bad_wrapper_flag_is_one_line_naming_it(capsys, tmp_path, plugin, flag, fragments):
    out = tmp_path / "store"
    code, _, err = run_cli(
        capsys, "run", *TINY, "--plugin", str(plugin), "--out", str(out), "--wrapper", flag
    )
    assert_one_line_error(code, err, *fragments)
    assert not (out / "runs").exists()


def test_a_sweep_file_names_a_plugin_wrapper_by_the_wrappers_key(tmp_path, plugin):
    """The sweep file's `wrappers` key is what `--wrapper` sets: each config read through its class."""
    from kdbench.execution import config

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"custom_imports: {{imports: [{plugin}]}}\nwrappers: {{toy: {{scale: 3}}}}\n"
        "dataset: synthetic\npairs: resnet14:resnet8\nmethods: kd\n"
    )
    built = config.build_request(config.resolve(sweep))
    assert built.wrappers == wrapper_configs({"toy": {"scale": 3.0}})
    assert type(built.wrappers["toy"]).__name__ == "ToyConfig" and built.wrappers["toy"].scale == 3
    flags = config.resolve(
        flags={"wrappers": {"toy": {"scale": 3}}, "custom_imports": {"imports": [str(plugin)]}}
    )
    assert config.build_request(flags).wrappers == built.wrappers
