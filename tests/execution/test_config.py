"""Sweep files (YAML, JSON, Python; `_base_` chains), grids, the resolved configuration in the store, and plugins."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.errors import ConfigError
from kdbench.execution import config

ROOT = Path(__file__).resolve().parents[2]
TINY_FILE = """
dataset: synthetic
pairs: resnet14:resnet8
methods: [student, kd]
vam: off
seeds: 1
recipe: {epochs: 1, train_subset: 128}
teacher_recipe: {epochs: 1, train_subset: 128}
jobs: 1
"""


def _kdbench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command in a fresh process (a plugin registers into that process only)."""
    return subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_a_yaml_grid_gives_two_configurations_in_one_command(tmp_path, capsys):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(TINY_FILE + "hp: {kd.temperature: [2, 4]}\n")
    assert main(["run", "--config", str(sweep), "--out", str(tmp_path / "store"), "--format", "csv"]) == 0
    records = [r for r in store.load_records(tmp_path / "store") if r["spec"]["method"] == "kd"]
    assert sorted(r["spec"]["hp"]["temperature"] for r in records) == [2.0, 4.0]
    assert len({r["run_id"] for r in records}) == 2
    (written,) = (tmp_path / "store" / "sweeps").glob("*.json")
    resolved = json.loads(written.read_text())
    assert resolved["config"]["hp"] == {"kd": {"temperature": [2, 4]}}
    assert resolved["argv"][:3] == ["run", "--config", str(sweep)]
    assert config.resolved_record(resolved["config"])["sha256"] == resolved["sha256"]


def test_a_grid_multiplies_only_its_own_method_and_a_vam_grid_its_vam_runs(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(
        TINY_FILE.replace("vam: off", "vam: both")
        + "hp: {kd.temperature: [2, 4], kd.kd_weight: [0.9, 0.5]}\nvam_config: {groups: [2, 4]}\n"
    )
    request = config.build_request(config.resolve(sweep))
    from kdbench.execution.sweep import specs_for_pair

    specs = specs_for_pair(request, request.pairs[0], None) + specs_for_pair(
        request, request.pairs[0], "0" * 64
    )
    by_method = {m: [s for s in specs if s.method == m] for m in ("student", "kd")}
    assert len(by_method["student"]) == 1 + 2  # off, and one per VAM config
    assert len(by_method["kd"]) == 4 * (1 + 2)  # the 2x2 grid, VAM off and the two VAM configs
    assert {s.wrappers["vam"].groups for s in by_method["kd"] if s.wrappers} == {2, 4}


def test_flags_override_the_file_and_the_file_overrides_its_preset(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("preset: ci\nseeds: 2\nrecipe: {epochs: 4}\n")
    from_file = config.resolve(sweep)
    assert from_file["preset"] == "ci" and from_file["seeds"] == 2
    assert from_file["recipe"]["epochs"] == 4 and from_file["recipe"]["train_subset"] == 1500  # ci's
    assert from_file["recipe"]["lr_decay_epochs"] == [2]  # ci's decay at 1 of 2 epochs, rescaled
    with_flags = config.resolve(sweep, {"seeds": 5, "recipe": {"epochs": 6}})
    assert with_flags["seeds"] == 5 and with_flags["recipe"]["epochs"] == 6
    assert config.resolve(sweep, preset="quick")["recipe"]["train_subset"] == 6000


@pytest.mark.parametrize(
    "name, text",
    [
        ("s.json", '{"methods": ["kd"], "seeds": 2, "hp": {"kd": {"temperature": [2, 4]}}}'),
        ("s.py", "methods = ['kd']\nseeds = 2\nhp = dict(kd=dict(temperature=[2, 4]))\n"),
    ],
)
def test_json_and_python_sweep_files_read_alike(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    resolved = config.resolve(tmp_path / name)
    assert resolved["methods"] == ["kd"] and resolved["hp"] == {"kd": {"temperature": [2, 4]}}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("epochz: 3\n", "unknown key(s) epochz"),
        ("vam_config: {grops: 2}\n", "vam_config: unknown key(s) grops"),
        ("seeds: [0, -1]\n", "seeds must be whole numbers"),
        ("hp: {temperature: 2}\n", "bad hp key 'temperature'"),
        ("custom_imports: {imports: 3}\n", "custom_imports takes"),
        ("custom_imports: {imports: [missing_plugin.py]}\n", "missing_plugin.py not found"),
        ("vam: sometimes\n", "vam takes on, off or both"),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_what_is_wrong(tmp_path, capsys, text, fragment):
    sweep = tmp_path / "bad.yaml"
    key = text.split(":")[0]  # a key written twice is refused itself: the case's line replaces the file's
    kept = [line for line in TINY_FILE.splitlines(keepends=True) if not line.startswith(f"{key}:")]
    sweep.write_text("".join(kept) + text)
    code = main(["run", "--config", str(sweep), "--out", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and fragment in err, err
    assert not (tmp_path / "store" / "runs").exists()


def test_missing_or_unparsable_sweep_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.resolve(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("methods: [kd\n")
    with pytest.raises(ConfigError, match="broken.yaml is unreadable"):
        config.resolve(tmp_path / "broken.yaml")


def test_an_hp_grid_on_the_command_line(tmp_path, capsys):
    args = ["run", "--config", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "store")]
    (tmp_path / "s.yaml").write_text(TINY_FILE.replace("[student, kd]", "[kd]"))
    assert main([*args, "--hp", "kd.temperature=2,4", "--format", "csv"]) == 0
    temperatures = sorted(r["spec"]["hp"]["temperature"] for r in store.load_records(tmp_path / "store"))
    assert temperatures == [2.0, 4.0]
    assert main([*args, "--hp", "kd.temperature=2,x"]) == 2
    assert "kd.temperature='x'" in capsys.readouterr().err


def _readme_plugin_example() -> tuple[str, str]:
    """The README's plugin file and the command after it, exactly as written there."""
    readme = (ROOT / "README.md").read_text()
    after = readme.split("<!-- plugin-example -->", 1)[1]
    code = re.search(r"```python\n(.*?)```", after, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", after, re.S).group(1).replace("\\\n", " ")
    return code, command


@pytest.mark.slow
def test_the_readme_plugin_example_runs_as_written_on_a_worker_pool(tmp_path):
    code, command = _readme_plugin_example()
    assert len(code.strip().splitlines()) <= 22
    (tmp_path / "my_method.py").write_text(code)
    words = command.split()
    assert words[0] == "kdbench" and "--jobs" in words  # spawned workers must load the plugin too
    result = _kdbench(*words[1:], "--out", "store", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["spec"]["method"]: r for r in store.load_records(tmp_path / "store")}
    assert records["prob_l2"]["status"] == "done"
    assert records["prob_l2"]["environment"]["concurrent_runs"] == 2
    assert "prob_l2" in records["prob_l2"]["history"][0]["loss_terms"]


def test_a_plugin_from_a_sweep_files_custom_imports_and_from_an_entry_point(tmp_path):
    code, _ = _readme_plugin_example()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_method.py").write_text(code)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        TINY_FILE.replace("[student, kd]", "[prob_l2]")
        + "custom_imports: {imports: [plugins/my_method.py]}\n"  # relative to the sweep file
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _kdbench("run", "--config", str(sweep), "--out", "store", "--format", "csv", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = store.load_records(elsewhere / "store")
    assert record["spec"]["method"] == "prob_l2" and record["status"] == "done"
    # an installed distribution's entry point: a real dist-info on the path, found by importlib.metadata
    site = tmp_path / "site"
    (site / "myplug-0.1.dist-info").mkdir(parents=True)
    (site / "myplug-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n"
    )
    (site / "myplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[kdbench.execution.plugins]\nprob = myplug_methods\n"
    )
    (site / "myplug_methods.py").write_text(code)
    listing = _kdbench("list", "methods", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert listing.returncode == 0 and "prob_l2" in listing.stdout, listing.stderr[-2000:]
    assert "prob_l2" not in _kdbench("list", "methods", cwd=tmp_path).stdout
