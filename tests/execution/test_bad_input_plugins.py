"""Bad input on plugins, grids and back-ends: each case exits 2 with one line naming the plugin file,
flag or key at fault, and no finished record of the store changes."""

import hashlib
import time
import tracemalloc
from pathlib import Path

import pytest
from test_bad_input import TINY, assert_one_line_error, run_cli

from kdbench.cli import main
from kdbench.execution import plugins

METHOD = '''
import torch.nn.functional as F
from kdbench.methods.base import Method, register_method


@register_method
class Mine(Method):
    """A plugin method: squared L2 between softened probabilities."""

    name = {name!r}
    defaults = {{"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "temperature": 4.0}}

    def method_terms(self, student, teacher, labels, indices):
        t = self.hp["temperature"]
        gap = F.softmax(student.logits / t, dim=1) - F.softmax(teacher.logits / t, dim=1)
        return {{"mine": gap.pow(2).sum(dim=1).mean()}}
'''


@pytest.fixture(autouse=True)
def _forget_plugins():
    """What a test's plugins registered is forgotten after it (the registries are per process)."""
    yield
    for plugin in list(plugins._plugins.values()):
        plugins._unload(plugin)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding finished records: a student run and its teacher."""
    out = tmp_path_factory.mktemp("store")
    assert main(["run", *TINY, "--methods", "student", "--out", str(out), "--format", "csv"]) == 0
    return out


def _records(out: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (out / "runs").glob("*.json")
    }


@pytest.fixture
def unchanged(store):
    """Asserts, after the test, that the store's finished records are as they were."""
    before = _records(store)
    assert before
    yield store
    assert _records(store) == before


def _run(capsys, store: Path, *argv: str):
    return run_cli(capsys, "run", *TINY, "--out", str(store), *argv)


# -- plugin files that cannot be loaded: one line naming the file -----------------------------------
@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("x = (\n", ["syntax error at line 1"]),
        (
            "import os\n\nraise ValueError('the plugin is broken')\n",
            ["(line 3)", "ValueError: the plugin is broken"],
        ),
        ("import no_such_module_kdbench\n", ["(line 1)", "ModuleNotFoundError", "no_such_module_kdbench"]),
        (METHOD.format(name="kd"), ["method 'kd' is already registered", "built-in"]),
        (
            "from kdbench.core.registries import DATASETS\nDATASETS.register_module(name='synthetic', module=len)\n",
            ["dataset 'synthetic' is already registered"],
        ),
        (
            "from kdbench.methods.base import Method, register_method\nregister_method(type('M', (Method,), {}))\n",
            ["has no `name`"],
        ),
    ],
    ids=["syntax", "raises", "missing-import", "clash-method", "clash-dataset", "no-name"],
)
def test_a_plugin_that_cannot_load_is_one_line_naming_its_file(capsys, tmp_path, unchanged, text, fragments):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(text)
    code, _, err = _run(capsys, unchanged, "--plugin", str(plugin), "--methods", "student")
    assert_one_line_error(code, err, f"plugin {plugin}", *fragments)


@pytest.mark.parametrize("name", ["a,b", "a+b", "a b", "a=b", "=HYPERLINK(1)", "-x", "a.b", "x" * 65])
def test_a_name_that_could_never_be_selected_is_refused_at_registration(capsys, tmp_path, unchanged, name):
    plugin = tmp_path / "bad_name.py"
    plugin.write_text(METHOD.format(name=name))
    code, _, err = _run(capsys, unchanged, "--plugin", str(plugin), "--methods", "student")
    assert_one_line_error(code, err, f"plugin {plugin}", "method name", "is not valid", "letters, digits")
    assert not plugins._plugins  # nothing of it stays registered


def test_a_model_name_holding_a_colon_is_refused(capsys, tmp_path, unchanged):
    plugin = tmp_path / "bad_model.py"
    plugin.write_text(
        "from kdbench.core.registries import MODELS\nMODELS.register_module(name='my:net', module=lambda **kw: None)\n"
    )
    code, _, err = _run(capsys, unchanged, "--plugin", str(plugin), "--methods", "student")
    assert_one_line_error(code, err, f"plugin {plugin}", "model name 'my:net' is not valid")


def test_two_plugins_registering_one_name_are_both_named(capsys, tmp_path, unchanged):
    first, second = tmp_path / "first_plugin.py", tmp_path / "second_plugin.py"
    for path in (first, second):
        path.write_text(METHOD.format(name="twice_named"))
    first.write_text(first.read_text() + "# the first\n")  # other code: both are loaded
    code, _, err = _run(
        capsys, unchanged, "--plugin", str(first), "--plugin", str(second), "--methods", "student"
    )
    assert_one_line_error(
        code, err, f"plugin {second}", "'twice_named' is already registered", f"plugin {first}"
    )


def test_two_plugin_files_of_one_name_are_refused(capsys, tmp_path, unchanged):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for folder, name in (("a", "mine_a"), ("b", "mine_b")):
        (tmp_path / folder / "mine.py").write_text(METHOD.format(name=name))
    argv = ["--plugin", str(tmp_path / "a" / "mine.py"), "--plugin", str(tmp_path / "b" / "mine.py")]
    code, _, err = _run(capsys, unchanged, *argv, "--methods", "student")
    assert_one_line_error(code, err, "share a file name", "rename one")


@pytest.mark.parametrize(
    ("given", "fragment"), [("folder", "is a directory, expected a file"), ("missing.py", "not found")]
)
def test_a_plugin_path_that_is_no_file_is_named(capsys, tmp_path, unchanged, given, fragment):
    (tmp_path / "folder").mkdir()
    code, _, err = _run(capsys, unchanged, "--plugin", str(tmp_path / given), "--methods", "student")
    assert_one_line_error(code, err, str(tmp_path / given), fragment)


def test_a_plugin_file_not_named_py_is_not_taken_for_a_module(capsys, tmp_path, unchanged, monkeypatch):
    """`--plugin mine.txt` (no slash, no .py) read as the module mine.txt said "No module named 'mine'"."""
    monkeypatch.chdir(tmp_path)
    Path("mine.txt").write_text(METHOD.format(name="mine"))
    code, _, err = _run(capsys, unchanged, "--plugin", "mine.txt", "--methods", "student")
    assert_one_line_error(code, err, "plugin mine.txt is a file but not a Python file; name it .py")


def test_a_plugin_module_that_is_not_importable_is_named(capsys, tmp_path, unchanged):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("custom_imports: {imports: [no_such_plugin_module]}\n")
    code, _, err = _run(capsys, unchanged, "--config", str(sweep), "--methods", "student")
    assert_one_line_error(code, err, "plugin module 'no_such_plugin_module' is not importable")


def test_list_methods_with_a_broken_plugin_names_it(capsys, tmp_path):
    plugin = tmp_path / "broken_list.py"
    plugin.write_text("raise RuntimeError('no')\n")
    code, _, err = run_cli(capsys, "list", "methods", "--plugin", str(plugin))
    assert_one_line_error(code, err, f"plugin {plugin} failed at import (line 1): RuntimeError: no")


# -- grids: refused over the limit before anything is built ----------------------------------------
def _peak_bytes_of(call):
    """What `call` returns and the most memory Python held for it at once (tracemalloc: a count of
    bytes, not a timing, so it does not depend on how busy the machine is)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_grid_over_the_limit_is_refused_at_once_naming_the_count_and_the_flag(capsys, unchanged):
    values = ",".join(str(v) for v in range(1, 1001))
    argv = ["--methods", "kd", "--hp", f"kd.temperature={values}", "--hp", f"kd.kd_weight={values}"]
    (code, _, err), peak = _peak_bytes_of(lambda: _run(capsys, unchanged, *argv))
    assert_one_line_error(code, err, "1,000,000 runs", "limit of 10,000", "--max-runs", "max_runs")
    assert peak < 64 * 2**20  # counted, not built: a million specs or grid points take gigabytes


def test_a_vam_grid_over_the_limit_is_refused_before_its_configurations_are_built(
    capsys, tmp_path, unchanged
):
    sweep = tmp_path / "vam-grid.yaml"
    ten, hundred = list(range(1, 11)), list(range(1, 101))
    sweep.write_text(
        f"vam: 'on'\nvam_config: {{groups: {hundred}, t0: {ten}, t_min: {[v / 10 for v in ten]}, "
        f"lr_scale: {ten}, entropy_weight: {[v / 100 for v in ten]}}}\n"
    )
    (code, _, err), peak = _peak_bytes_of(lambda: _run(capsys, unchanged, "--config", str(sweep)))
    assert_one_line_error(code, err, "vam_config is a grid of 1,000,000", "--max-runs 1000000")
    assert peak < 64 * 2**20


def test_a_grid_over_a_lowered_limit_is_refused(capsys, unchanged):
    code, _, err = _run(
        capsys, unchanged, "--methods", "kd", "--hp", "kd.temperature=2,4,8", "--max-runs", "2"
    )
    assert_one_line_error(code, err, "up to 3 runs", "limit of 2", "--max-runs 3")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--max-runs", "0"], "--max-runs: must be >= 1"),
        (["--cohort", "0"], "--cohort: must be >= 1"),
        (["--cohort", "many"], "--cohort: takes a whole number"),
    ],
)
def test_a_bad_limit_flag_is_named(capsys, unchanged, argv, fragment):
    code, _, err = _run(capsys, unchanged, "--methods", "student", *argv)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("max_runs: many\n", "max_runs (--max-runs) must be a whole number"), ("cohort: -2\n", "cohort takes")],
)
def test_a_bad_limit_key_in_a_sweep_file_is_named(capsys, tmp_path, unchanged, text, fragment):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    code, _, err = _run(capsys, unchanged, "--config", str(sweep), "--methods", "student")
    assert_one_line_error(code, err, fragment)


# -- back-ends ---------------------------------------------------------------------------------------
def test_an_unreachable_ray_address_gives_up_at_once_naming_it(capsys, unchanged):
    pytest.importorskip("ray")
    started = time.perf_counter()
    code, _, err = _run(
        capsys, unchanged, "--methods", "student", "--backend", "ray", "--ray-address", "127.0.0.1:1"
    )
    assert_one_line_error(code, err, "--ray-address 127.0.0.1:1", "no Ray cluster there", "30 s")
    assert time.perf_counter() - started < 30


# -- rerun of a plugin's record ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_store(tmp_path_factory) -> tuple[Path, Path]:
    """A store with a finished record of a plugin method, and the plugin file."""
    folder = tmp_path_factory.mktemp("plugin_store")
    plugin = folder / "rerun_plugin.py"
    plugin.write_text(METHOD.format(name="rerun_mine"))
    argv = ["run", *TINY, "--plugin", str(plugin), "--methods", "rerun_mine", "--out", str(folder / "store")]
    try:
        assert main([*argv, "--format", "csv"]) == 0
    finally:
        for loaded in list(plugins._plugins.values()):
            plugins._unload(loaded)
    return folder / "store", plugin


def _plugin_record(out: Path) -> Path:
    for path in (out / "runs").glob("*.json"):
        if '"rerun_mine"' in path.read_text():
            return path
    raise AssertionError("no plugin record")


def test_rerun_without_the_plugin_anywhere_names_it(capsys, plugin_store, tmp_path):
    out, _ = plugin_store
    record = _plugin_record(out)
    copy = next((out / "plugins").glob("*.py"))
    before = _records(out)
    hidden = copy.rename(tmp_path / copy.name)
    try:
        code, _, err = run_cli(capsys, "rerun", str(record), "--out", str(tmp_path / "new"))
    finally:
        hidden.rename(copy)
    assert_one_line_error(code, err, "rerun_plugin.py", hidden.stem[:12], "--plugin FILE")
    assert _records(out) == before


def test_rerun_with_another_version_of_the_plugin_is_refused(capsys, plugin_store, tmp_path):
    out, plugin = plugin_store
    edited = tmp_path / plugin.name
    edited.write_text(plugin.read_text().replace("pow(2)", "abs()"))
    before = _records(out)
    code, _, err = run_cli(capsys, "rerun", str(_plugin_record(out)), "--plugin", str(edited))
    assert_one_line_error(code, err, f"--plugin {edited}", "not a plugin of this record", "rerun_plugin.py")
    assert _records(out) == before


def test_rerun_with_a_tampered_store_copy_is_refused(capsys, plugin_store, tmp_path):
    out, _ = plugin_store
    copy = next((out / "plugins").glob("*.py"))
    original = copy.read_bytes()
    before = _records(out)
    copy.write_bytes(original + b"\nimport os  # added later\n")
    try:
        code, _, err = run_cli(capsys, "rerun", str(_plugin_record(out)), "--out", str(tmp_path / "new"))
    finally:
        copy.write_bytes(original)
    assert_one_line_error(code, err, f"plugin copy {copy}", "does not match its SHA-256")
    assert _records(out) == before
