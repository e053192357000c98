"""A plugin's code is part of the runs that use it (RunSpec.plugin_sha256), kept in the store, and loaded
from there by `kdbench rerun`; large grids are planned in bounded cohorts with their logs opened lazily."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import TINY

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.catalog import parse_pairs
from kdbench.core.spec import Recipe, RunSpec
from kdbench.core.trackers import RunLogs
from kdbench.execution import plugins
from kdbench.execution.sweep import SweepRequest, count_runs, specs_for_pair
from kdbench.training.cohort import MAX_COHORT_MEMBERS, plan_cohorts

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = '''
import torch.nn.functional as F
from kdbench.methods.base import Method, register_method


@register_method
class Gap(Method):
    """A plugin method: a distance between softened probabilities."""

    name = "prob_gap"
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "temperature": 4.0}

    def method_terms(self, student, teacher, labels, indices):
        t = self.hp["temperature"]
        gap = F.softmax(student.logits / t, dim=1) - F.softmax(teacher.logits / t, dim=1)
        return {"prob_gap": gap.pow(2).sum(dim=1).mean()}
'''


@pytest.fixture(autouse=True)
def _forget_plugins():
    yield
    for plugin in list(plugins._plugins.values()):
        plugins._unload(plugin)


def _plugin_records(out: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in store.load_records(out) if r["spec"]["method"] == "prob_gap"}


def test_an_edited_plugin_trains_anew_and_its_rerun_needs_only_the_store(tmp_path, capsys):
    plugin, out = tmp_path / "prob_gap.py", tmp_path / "store"
    plugin.write_text(PLUGIN)
    argv = [
        "run",
        *TINY,
        "--plugin",
        str(plugin),
        "--methods",
        "prob_gap",
        "--out",
        str(out),
        "--format",
        "csv",
    ]
    assert main(argv) == 0
    (first,) = _plugin_records(out).values()
    first_bytes = store.record_path(out, first["run_id"]).read_bytes()
    assert first["spec"]["plugin_sha256"] == {"prob_gap.py": _sha256(plugin)}
    assert (out / "plugins" / f"{_sha256(plugin)}.py").read_bytes() == plugin.read_bytes()

    plugin.write_text(PLUGIN.replace("pow(2)", "abs()"))  # the same command, another loss
    capsys.readouterr()
    assert main(argv) == 0
    assert "kdbench: 1 run planned (0 cached)" in capsys.readouterr().err
    records = _plugin_records(out)
    assert len(records) == 2 and first["run_id"] in records  # trained anew; the first record stays
    assert store.record_path(out, first["run_id"]).read_bytes() == first_bytes
    assert main(argv) == 0  # unchanged since: cached
    assert "kdbench: 1 run planned (1 cached)" in capsys.readouterr().err

    # a fresh process, the plugin file gone: rerun loads the store's copy of the first version
    plugin.unlink()
    record = store.record_path(out, first["run_id"])
    result = subprocess.run(
        [sys.executable, "-m", "kdbench", "rerun", str(record), "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert result.returncode == 0 and "bit for bit" in result.stdout, result.stderr[-2000:]
    assert (tmp_path / "again" / "plugins" / f"{first['spec']['plugin_sha256']['prob_gap.py']}.py").is_file()


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_takes_the_plugin_file_given(tmp_path):
    plugin, out = tmp_path / "prob_gap.py", tmp_path / "store"
    plugin.write_text(PLUGIN)
    assert main(["run", *TINY, "--plugin", str(plugin), "--methods", "prob_gap", "--out", str(out)]) == 0
    (record,) = _plugin_records(out).values()
    for copy in (out / "plugins").glob("*.py"):
        copy.unlink()
    for loaded in list(plugins._plugins.values()):
        plugins._unload(loaded)
    path = store.record_path(out, record["run_id"])
    assert main(["rerun", str(path), "--plugin", str(plugin), "--out", str(tmp_path / "again")]) == 0


def test_list_methods_loads_a_plugin_and_says_whose_it_is(tmp_path, capsys):
    plugin = tmp_path / "prob_gap.py"
    plugin.write_text(PLUGIN)
    assert main(["list", "methods", "--plugin", str(plugin)]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prob_gap")]
    assert "(plugin prob_gap.py)" in line


def test_only_the_runs_using_a_plugin_carry_its_hash(tmp_path):
    plugin = tmp_path / "prob_gap.py"
    plugin.write_text(PLUGIN)
    plugins.load([str(plugin)])
    request = SweepRequest(
        methods=["student", "kd", "prob_gap"],
        pairs=parse_pairs("resnet14:resnet8"),
        dataset="synthetic",
        recipe=Recipe(epochs=1),
        teacher_recipe=Recipe(epochs=1),
    )
    specs = specs_for_pair(request, request.pairs[0], None) + specs_for_pair(
        request, request.pairs[0], "0" * 64
    )
    hashes = {spec.method: spec.plugin_sha256 for spec in specs}
    assert hashes == {"student": {}, "kd": {}, "prob_gap": {"prob_gap.py": _sha256(plugin)}}


def test_count_runs_is_the_grid_without_building_it():
    request = SweepRequest(
        methods=["student", "kd"],
        pairs=parse_pairs("resnet14:resnet8,resnet20:resnet8"),
        dataset="synthetic",
        recipe=Recipe(epochs=1),
        teacher_recipe=Recipe(epochs=1),
        seeds=[0, 1, 2],
        vam_modes=[False, True],
        hp_overrides={"kd": {"temperature": [2, 4], "kd_weight": [0.5, 0.9, 1.0]}},
    )
    specs = {
        spec.run_id
        for pair in request.pairs
        for sha in (None, "0" * 64)
        for spec in specs_for_pair(request, pair, sha)
    }
    # student: 2 VAM x 3 seeds x 2 pairs; kd: 6 points x 2 x 3 x 2 (the two pairs share the student's runs)
    assert count_runs(request) == 12 + 72
    assert len(specs) == 6 + 72


def _spec(method: str, seed: int = 0) -> RunSpec:
    return RunSpec(method=method, student="resnet8", dataset="synthetic", seed=seed, hp={"i": method})


def test_a_large_group_is_cut_into_bounded_cohorts():
    specs = [_spec(f"m{i}") for i in range(25 * 24)]  # the 25 x 24 grid of one seed, at --jobs 1
    cohorts = plan_cohorts(specs, jobs=1)
    assert max(len(c) for c in cohorts) <= MAX_COHORT_MEMBERS
    assert sorted(s.method for c in cohorts for s in c) == sorted(s.method for s in specs)
    assert max(len(c) for c in plan_cohorts(specs, jobs=1, largest=5)) == 5
    assert len(plan_cohorts(specs[:10], jobs=1)) == 1  # a small group stays one cohort


def test_run_logs_hold_no_file_open_per_member(tmp_path):
    specs = [_spec(f"m{i}") for i in range(400)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # fewer than the members
    try:
        with RunLogs(tmp_path, specs, (), forward=lambda line: None) as logs:
            for spec in specs:
                logs.progress(f"[{spec.run_id}] epoch 1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (tmp_path / "logs" / f"{specs[-1].run_id}.txt").read_text() == f"[{specs[-1].run_id}] epoch 1\n"


def test_a_grid_trains_in_bounded_cohorts_with_every_log(tmp_path, capsys):
    out = tmp_path / "store"
    argv = ["run", *TINY, "--methods", "kd", "--hp", "kd.temperature=1,2,3,4,5", "--cohort", "2"]
    assert main([*argv, "--out", str(out), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "kdbench: 5 runs planned (0 cached), 1 teacher(s) to train first" in err
    records = store.load_records(out)
    assert len(records) == 5 and all(r["status"] == "done" for r in records)
    assert sorted(r["environment"]["cohort_size"] for r in records) == [1, 2, 2, 2, 2]
    for record in records:
        assert (out / "logs" / f"{record['run_id']}.txt").read_text().count(record["run_id"]) >= 1
    resolved = json.loads(next((out / "sweeps").glob("*.json")).read_text())
    assert resolved["config"]["cohort"] == 2


def test_a_worker_refuses_a_run_whose_plugin_changed_after_planning(tmp_path):
    """A worker started after the plugin file was edited loads the new code: it must not train a spec
    whose run id holds the old code's SHA-256 (the record would claim code it did not run)."""
    from kdbench.execution.units import RunUnit, Worker, WorkerSettings

    plugin, out = tmp_path / "prob_gap.py", tmp_path / "store"
    plugin.write_text(PLUGIN)
    plugins.load([str(plugin)])
    spec = RunSpec(
        method="prob_gap",
        student="resnet8",
        teacher="resnet14",
        teacher_sha256="0" * 64,
        dataset="synthetic",
        recipe=Recipe(epochs=1, train_subset=128, lr_decay_epochs=()),
        plugin_sha256=plugins.sha256_for("prob_gap", ("resnet8", "resnet14"), "synthetic"),
    )
    plugin.write_text(PLUGIN.replace("pow(2)", "abs()"))  # edited while the sweep runs
    worker = Worker(WorkerSettings(out=out, plugins=(str(plugin),)))  # a worker started now
    with pytest.raises(
        plugins.PluginError, match=r"plugin code changed since its runs were planned \(prob_gap\.py"
    ):
        worker.execute(RunUnit((spec,), None))
    assert not store.runs_dir(out).exists()
