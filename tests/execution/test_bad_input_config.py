"""The bad-input battery on sweep files (YAML, JSON, Python), checkpoints and messages: each case
exits 2 with one line naming the file, flag or field at fault, runs no code from a data file, and
changes no finished record of the store it runs against."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_bad_input import TINY, assert_one_line_error, run_cli

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.catalog import presets
from kdbench.execution import config
from kdbench.models import build_model
from kdbench.reporting import check
from kdbench.training import teachers


def snapshot(out: Path) -> dict[str, bytes]:
    """The bytes of every record in a store, and of its teachers' measured accuracies."""
    files = [*(out / "runs").glob("*.json"), *(out / "teachers").glob("*.json")]
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(files)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A store with a teacher, a student baseline and a kd run, trained once for the module."""
    out = tmp_path_factory.mktemp("trained") / "store"
    assert main(["run", *TINY, "--methods", "student,kd", "--out", str(out)]) == 0
    return out


@pytest.fixture
def store_copy(trained, tmp_path) -> Path:
    """A copy of the trained store that a case may tamper with."""
    return Path(shutil.copytree(trained, tmp_path / "store"))


def run_sweep(capsys, out: Path, sweep: Path, *flags):
    """`kdbench run --config SWEEP` against `out`: (code, err); no record of `out` changed."""
    before = snapshot(out)
    code, _, err = run_cli(capsys, "run", *TINY, "--config", str(sweep), *flags, "--out", str(out))
    assert snapshot(out) == before
    return code, err


# -- YAML is data: no tag builds an object, nothing runs ------------------------------------------------
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('methods: !!python/object/apply:os.system ["touch {marker}"]\n', "!!python/object/apply:os.system"),
        ('methods: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n', "!!python/object/new"),
        ("methods: !include {marker}\n", "!include"),
        ("hp: {{kd.temperature: !!python/name:os.system }}\n", "!!python/name:os.system"),
    ],
)
def test_a_yaml_tag_is_refused_and_runs_nothing(capsys, trained, tmp_path, text, shown):
    marker = tmp_path / "PWNED"
    sweep = tmp_path / "evil.yaml"
    sweep.write_text(text.format(marker=marker))
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, f"sweep file {sweep} line 1: YAML tag", shown, "refused")
    assert not marker.exists()


def test_a_tag_in_a_base_file_is_refused_naming_that_file(capsys, trained, tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "base.yaml").write_text(f'seeds: !!python/object/apply:os.system ["touch {marker}"]\n')
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("_base_: base.yaml\nmethods: [kd]\n")
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, f"{tmp_path / 'base.yaml'} (a _base_ of {sweep})", "YAML tag")
    assert not marker.exists()


def test_nested_yaml_aliases_are_refused_before_they_expand(capsys, trained, tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    sweep = tmp_path / "laughs.yaml"
    sweep.write_text("hp:\n" + "".join(f"  {level}\n" for level in levels))
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, str(sweep), "line 3: YAML alias '*a0' refused")


def test_a_yaml_base_may_not_name_python(capsys, trained, tmp_path):
    marker = tmp_path / "RAN"
    (tmp_path / "base.py").write_text(f"open({str(marker)!r}, 'w').close()\nmethods = ['kd']\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("_base_: [base.py]\n")
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, str(sweep), "_base_ 'base.py' is a Python file")
    assert not marker.exists()


def test_a_cycle_of_base_files_is_refused(capsys, trained, tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nmethods: [kd]\n")
    code, err = run_sweep(capsys, trained, tmp_path / "a.yaml")
    assert_one_line_error(
        code, err, str(tmp_path / "b.yaml"), "_base_ 'a.yaml' names a file of its own chain"
    )


def test_base_files_fill_in_under_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "methods: [kd]\nseeds: 3\nrecipe: {epochs: 6, lr_decay_epochs: [3]}\n"
    )
    (tmp_path / "sweep.json").write_text(
        json.dumps({"_base_": "base.yaml", "seeds": 2, "recipe": {"epochs": 12}})
    )
    resolved = config.resolve(tmp_path / "sweep.json")
    assert resolved["methods"] == ["kd"] and resolved["seeds"] == 2
    assert resolved["recipe"]["epochs"] == 12 and resolved["recipe"]["lr_decay_epochs"] == [6]


def test_the_presets_read_as_plain_data():
    assert {"quick", "ci", "paper"} <= set(presets()) and presets()["quick"]["methods"]


# -- the shape of a sweep file ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.yaml", "", "must hold a mapping of keys (key: value lines), got nothing"),
        ("list.yaml", "- kd\n- student\n", "must hold a mapping of keys (key: value lines), got a list"),
        ("word.yaml", "kd\n", "must hold a mapping of keys (key: value lines), got a string"),
        ("list.json", "[1, 2]", "must hold a mapping of keys (key: value lines), got a list"),
        ("broken.json", '{"methods": ["kd"', "is unreadable (not JSON: line 1"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "is unreadable (not JSON: nested too deeply)"),
        ("deep.yaml", "a: " + "[" * 5_000 + "]" * 5_000, "is unreadable (nested too deeply)"),
        ("broken.yaml", "methods: [kd\n", "is unreadable (line 2: expected ',' or ']'"),
        ("latin1.yaml", "description: caf\xe9\n".encode("latin-1"), "is unreadable (not UTF-8 text)"),
        (
            "sweep.toml",
            "methods = ['kd']\n",
            "is not YAML, JSON or Python: name it .yaml, .yml, .json or .py",
        ),
        ("recipe.yaml", "recipe: 3\n", ": recipe takes a mapping"),
        ("hp.yaml", "hp: [kd.temperature]\n", ": hp takes a mapping"),
        ("keys.yaml", "1: x\nnull: y\nmethods: [kd]\n", "unknown key(s) 1, None"),
        ("emptymethods.yaml", 'methods: ""\n', ": methods is empty"),
        ("nomethods.yaml", "methods: []\n", ": methods is empty"),
        ("base.yaml", "_base_: 3\n", "_base_ takes a file or a list of files (relative to it), got 3"),
        ("missingbase.yaml", "_base_: nowhere.yaml\n", "nowhere.yaml (a _base_ of"),
        # a key written twice would keep its last value silently
        (
            "twice.yaml",
            "methods: [kd]\nmethods: [dkd]\n",
            "line 2: key 'methods' appears twice in one mapping",
        ),
        (
            "twicehp.yaml",
            "hp:\n  kd: {temperature: 2, temperature: 4}\n",
            "line 2: key 'temperature' appears",
        ),
        ("twice.json", '{"methods": "kd", "methods": "dkd"}', "key 'methods' appears twice in one object"),
    ],
)
def test_a_malformed_sweep_file_is_one_line_naming_it(capsys, trained, tmp_path, name, content, fragment):
    sweep = tmp_path / name
    sweep.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, str(sweep), fragment)


def test_a_directory_given_as_the_sweep_file(capsys, trained, tmp_path):
    code, err = run_sweep(capsys, trained, tmp_path)
    assert_one_line_error(code, err, f"sweep file {tmp_path} is a directory, expected a file", "--config")


def test_a_long_unknown_key_is_cut(capsys, trained, tmp_path):
    sweep = tmp_path / "long.json"
    sweep.write_text(json.dumps({"k" * 100_000: 1}))
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, "unknown key(s) kkkk", "… (100000 chars)")
    assert len(err) < 1_000


# -- Python sweep files run, and their own error is the message ------------------------------------------
@pytest.mark.parametrize(
    ("code_text", "fragment"),
    [
        (
            "import kdbench_no_such_module\nmethods = ['kd']\n",
            "ModuleNotFoundError: No module named 'kdbench_no_such_module'",
        ),
        ("raise ValueError('seeds are read from a file that is not there')\n", "ValueError: seeds are read"),
        ("methods = ['kd'\n", "SyntaxError: "),
        ("methods = 1 / 0\n", "ZeroDivisionError: division by zero"),
    ],
)
def test_a_failing_python_sweep_gives_its_own_error(capsys, trained, tmp_path, code_text, fragment):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(code_text)
    code, err = run_sweep(capsys, trained, sweep)
    assert_one_line_error(code, err, f"sweep file {sweep} failed: {fragment}")


def test_a_python_sweep_runs_and_its_top_level_names_are_the_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("seeds: 3\n")
    sweep = tmp_path / "sweep.py"
    sweep.write_text(
        "import math\n_base_ = 'base.yaml'\n_private = 1\nmethods = ['kd', 'student'][: int(math.sqrt(4))]\n"
    )
    resolved = config.resolve(sweep)
    assert resolved["methods"] == ["kd", "student"] and resolved["seeds"] == 3


# -- flags: an empty value names its flag, a long one is cut ---------------------------------------------
@pytest.mark.parametrize(
    ("flag", "value"), [("--methods", ""), ("--methods", ","), ("--pairs", " , "), ("--dataset", "")]
)
def test_an_empty_flag_is_named(capsys, trained, flag, value):
    before = snapshot(trained)
    code, _, err = run_cli(capsys, "run", *TINY, flag, value, "--out", str(trained))
    assert_one_line_error(code, err, f"{flag} is empty")
    assert snapshot(trained) == before


@pytest.mark.parametrize("flag", ["--methods", "--pairs", "--dataset"])
def test_a_100_kb_value_is_not_echoed_whole(capsys, trained, flag):
    before = snapshot(trained)
    value = "x" * 100_000
    code, _, err = run_cli(capsys, "run", *TINY, flag, value, "--out", str(trained))
    assert_one_line_error(code, err, "xxxx… (100002 chars)")
    assert len(err) < 1_000 and snapshot(trained) == before


# -- checkpoints: a directory, something else than torch's, NaN or inf weights ---------------------------
def nan_weights(architecture: str, tensor: str, value: float) -> dict:
    torch.manual_seed(0)
    state = build_model(architecture, num_classes=10).state_dict()
    state[tensor].view(-1)[0] = value
    return state


@pytest.mark.parametrize(
    ("flag", "methods", "make", "fragment"),
    [
        ("--teacher", "kd", lambda p: torch.save({"model": nan_weights("resnet14", "layer1.0.conv1.weight", float("nan"))}, p),
         "holds NaN or inf weights (first in 'layer1.0.conv1.weight')"),
        ("--student-init", "student", lambda p: torch.save(nan_weights("resnet8", "fc.bias", float("inf")), p),
         "holds NaN or inf weights (first in 'fc.bias')"),
        ("--teacher", "kd", lambda p: p.mkdir(), "is a directory, expected a file; pass an existing checkpoint file to --teacher"),
        ("--student-init", "student", lambda p: p.mkdir(), "is a directory, expected a file"),
        ("--teacher", "kd", lambda p: p.write_text('{"model": {}}'), "is not a torch checkpoint (neither torch's zip"),
        ("--student-init", "student", lambda p: p.write_bytes(b""), "is not a torch checkpoint (an empty file)"),
        ("--student-init", "student", lambda p: p.write_bytes(b"\x80\x02K\x05."), "is unreadable (Invalid magic number"),
        pytest.param("--student-init", "student", lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00"),
                     "is unreadable (not a torch checkpoint: ",
                     marks=pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")),
    ],
)  # fmt: skip
def test_a_bad_checkpoint_is_refused_at_load_naming_the_file(
    capsys, trained, tmp_path, flag, methods, make, fragment
):
    path = tmp_path / "weights.pt"
    make(path)
    before = snapshot(trained)
    code, _, err = run_cli(capsys, "run", *TINY, "--methods", methods, flag, str(path), "--out", str(trained))
    assert_one_line_error(code, err, str(path), fragment)
    assert "weights_only" not in err  # torch's advice to load it unsafely is never passed on
    assert snapshot(trained) == before  # no record, and no accuracy measured with these weights


def test_a_cached_teacher_with_nan_weights_is_refused(capsys, store_copy):
    (teacher,) = [r for r in store.load_records(store_copy, kind="teacher")]
    path = store_copy / teacher["checkpoint"]["path"]
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["fc.weight"].view(-1)[5] = float("nan")
    torch.save(checkpoint, path)
    teacher["checkpoint"]["sha256"] = teachers.sha256_of(path)
    store.write_record(store_copy, teacher)  # a store whose record vouches for the damaged file
    before = snapshot(store_copy)
    argv = ["run", *TINY, "--methods", "kd", "--hp", "kd.temperature=3", "--out", str(store_copy)]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, str(path), "holds NaN or inf weights (first in 'fc.weight')")
    assert snapshot(store_copy) == before


# -- records: the schema message says what was found ----------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "shown"), [("1", "'1' (str)"), (True, "True (bool)"), (1.0, "1.0 (float)"), (2, "2 (int)")]
)
def test_a_record_of_another_schema_says_what_it_holds(capsys, store_copy, schema, shown):
    path = next((store_copy / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema": schema}))
    before = snapshot(store_copy)
    code, _, err = run_cli(capsys, "report", "--out", str(store_copy))
    assert_one_line_error(code, err, str(path), f"has schema {shown}, expected the number 1")
    assert snapshot(store_copy) == before


def test_the_help_and_the_readme_say_that_a_python_sweep_runs_as_code(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "a Python (.py) sweep file is RUN as code" in " ".join(capsys.readouterr().out.split())
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "### What kdbench trusts" in readme and "A Python sweep file is run as code" in readme


@pytest.mark.parametrize("student", ["resnet8", "timm:resnet18"])
def test_explain_with_a_student_that_is_no_hme_is_refused_before_training(capsys, trained, student):
    """Only an HME has the routing that explain analyses (it ended in a TypeError in the report)."""
    before = snapshot(trained)
    argv = ["explain", "--teacher", "resnet14", "--student", student, "--dataset", "synthetic"]
    code, _, err = run_cli(capsys, *argv, "--epochs", "1", "--seeds", "1", "--out", str(trained))
    assert_one_line_error(code, err, f"--student {student!r} is not an HME", "hme_small")
    assert snapshot(trained) == before


# -- kdbench check: the baseline and the pinned losses are files the user names --------------------------
@pytest.fixture
def baseline(capsys, trained, tmp_path, monkeypatch) -> Path:
    """A baseline of the trained store (of one seed: the seeds a baseline needs lowered for the test)."""
    monkeypatch.setattr(check, "MIN_SEEDS", 1)
    path = tmp_path / "baseline.json"
    assert main(["check", "--baseline", str(path), "--write-baseline", "--out", str(trained)]) == 0
    capsys.readouterr()
    return path


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{", "are unreadable (JSONDecodeError)"),
        ("[]", "are not a pins file"),
        ('{"rtol": {}, "losses": {"kd": [{"ce": "x"}]}}', "are not a pins file"),
    ],
)
def test_a_bad_pins_file_is_one_line_naming_it(capsys, trained, baseline, tmp_path, content, fragment):
    """A pins file was read unchecked: bad JSON or a string loss ended in a traceback."""
    pins = tmp_path / "pins.json"
    pins.write_text(content)
    before = snapshot(trained)
    code, _, err = run_cli(
        capsys, "check", "--baseline", str(baseline), "--out", str(trained), "--pins", str(pins)
    )
    assert_one_line_error(code, err, f"pinned losses {pins} {fragment}")
    assert snapshot(trained) == before


@pytest.mark.parametrize("flag", ["--baseline", "--pins"])
def test_a_folder_given_as_a_check_file_says_so(capsys, trained, baseline, tmp_path, flag):
    argv = {"--baseline": str(baseline), "--pins": str(tmp_path / "nowhere.json"), flag: str(tmp_path)}
    code, _, err = run_cli(
        capsys, "check", *(x for item in argv.items() for x in item), "--out", str(trained)
    )
    assert_one_line_error(code, err, f"{tmp_path} is a directory, expected a file")


def test_a_baseline_written_to_a_folder_is_one_line(capsys, trained, baseline, tmp_path):
    before = snapshot(trained)
    code, _, err = run_cli(
        capsys, "check", "--baseline", str(tmp_path), "--write-baseline", "--out", str(trained)
    )
    assert_one_line_error(code, err, f"baseline {tmp_path} cannot be written (Is a directory)")
    assert snapshot(trained) == before


def test_a_baseline_refusal_names_a_few_cells_not_all(capsys, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(check, "MIN_SEEDS", 2)
    monkeypatch.setattr(check, "SHOWN_CELLS", 1)  # the store has two cells: a student, kd
    code, _, err = run_cli(capsys, "check", "--baseline", str(tmp_path / "b.json"), "--write-baseline",
                           "--out", str(trained))  # fmt: skip
    assert_one_line_error(code, err, "(n=1) and 1 more; nothing written")
    assert err.count("(n=1)") == 1


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda b: b["cells"][0].update(mean="x"), "cell 0 has a bad mean"),
        (lambda b: b["cells"][0].update(std=float("nan")), "cell 0 has a bad std"),  # passed every test
        (lambda b: b["cells"][0].update(n=True), "cell 0 has a bad n"),
        (lambda b: b.update(alpha="hi"), "has a bad alpha"),
    ],
)
def test_a_baseline_value_that_cannot_be_right_is_named(capsys, trained, baseline, edit, fragment):
    """A baseline's values were used unchecked: a string mean or alpha ended in a traceback."""
    content = json.loads(baseline.read_text())
    edit(content)
    baseline.write_text(json.dumps(content))
    before = snapshot(trained)
    code, _, err = run_cli(capsys, "check", "--baseline", str(baseline), "--out", str(trained), "--no-pins")
    assert_one_line_error(code, err, f"baseline {baseline}", fragment)
    assert snapshot(trained) == before
