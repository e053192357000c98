"""The bad-input battery on records and stores: a record may be hostile. Every record is checked where it
is read (kdbench/core/store.py `read_record`: RECORD_SCHEMA and `RunSpec.from_dict`), so `report`, `check` and
`rerun` refuse a bad one in one line naming the file and the field (exit 2), show no impossible number, never
follow a hash out of the store, and change no finished record."""

import json
import math
import os
import shutil

import pytest
from test_bad_input import TINY, assert_one_line_error, run_cli

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.errors import ConfigError

EVIL = "../../evil"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real store: a teacher, a student and a kd run of one synthetic epoch."""
    out = tmp_path_factory.mktemp("store")
    assert main(["run", *TINY, "--methods", "student,kd", "--format", "csv", "--out", str(out)]) == 0
    return out


def record_file(out, method):
    """The record file of `method`'s run ("teacher": the teacher's)."""
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if method == "teacher" if record["kind"] == "teacher" else record["spec"]["method"] == method:
            return path
    raise AssertionError(f"no {method} record under {out}")


def snapshot(out):
    """Each entry of runs/: a record's bytes; a link's target and a FIFO's kind, never read (no end)."""
    return {
        path.name: os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "fifo"
        for path in sorted((out / "runs").iterdir())
    }


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the trained store to spoil, and its records' bytes before."""
    folder = tmp_path / "store"
    shutil.copytree(trained, folder, symlinks=True)
    return folder


def spoil(out, method, edit):
    """Rewrite `method`'s record as `edit` leaves it (JSON as Python writes it: NaN and Infinity included)."""
    path = record_file(out, method)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    return path


def setter(*keys, value):
    """An edit that sets record[keys[0]][keys[1]]... to `value`."""

    def edit(record):
        target = record
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def deleter(*keys):
    def edit(record):
        target = record
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


def assert_refused(capsys, out, path, *fragments, command=("report",)):
    """`kdbench <command> --out STORE` exits 2 with one line naming `path` and each fragment, prints no
    board, and changes no record."""
    before = snapshot(out)
    code, printed, err = run_cli(capsys, *command, "--out", str(out))
    assert_one_line_error(code, err, str(path), *fragments)
    assert not printed
    assert snapshot(out) == before


# -- hostile values in each field: report refuses the store, naming the file and the field ----------------
@pytest.mark.parametrize(
    ("method", "edit", "field"),
    [
        ("kd", setter("metrics", "last_top1", value=math.nan), "metrics.last_top1"),
        ("kd", setter("metrics", "last_top1", value=math.inf), "metrics.last_top1"),
        ("kd", setter("metrics", "last_top1", value=-50.0), "metrics.last_top1"),
        ("kd", setter("metrics", "last_top1", value=1e6), "metrics.last_top1"),
        ("kd", setter("metrics", "last_top1", value="70.0"), "metrics.last_top1"),
        ("student", setter("metrics", "best_epoch", value=True), "metrics.best_epoch"),
        ("student", setter("overhead", "peak_memory_bytes", value=-1), "overhead.peak_memory_bytes"),
        ("student", setter("overhead", "epoch_seconds", value=-math.inf), "overhead.epoch_seconds"),
        ("kd", setter("history", 0, "test_top1", value=math.nan), "history[0].test_top1"),
        ("kd", setter("history", 0, "loss_terms", value=[1, 2]), "history[0].loss_terms"),
        ("kd", setter("history", value={"epoch": 1}), "history must be a list"),
        ("kd", setter("teacher", "test_top1", value=math.nan), "teacher.test_top1"),
        ("kd", setter("environment", "threads", value="x"), "environment.threads"),
        ("kd", setter("environment", "threads", value=-3), "environment.threads"),
        ("kd", setter("environment", "fused_style", value="<b>hfta</b>"), "environment.fused_style"),
        ("kd", setter("wall_seconds", value=10**400), "wall_seconds"),
        ("kd", setter("spec", "seed", value=10**400), "spec field seed"),
        ("kd", setter("status", value="finished"), "status"),
        ("kd", setter("metrics", value=None), "status done without metrics"),
        ("kd", setter("kind", value="teacher"), "kind teacher is not its spec's kind distill"),
        ("teacher", setter("checkpoint", "sha256", value=EVIL), "checkpoint.sha256"),
        ("teacher", setter("checkpoint", "path", value="/etc/passwd"), "checkpoint.path"),
        ("kd", setter("spec", "seed", value="0"), "spec field seed"),
        ("kd", setter("spec", "seed", value=-3), "spec seed"),
        ("kd", setter("spec", "lr", value=0.1), "unknown spec field(s) ['lr']"),
        ("kd", deleter("spec", "student"), "spec has no student"),
        ("kd", setter("spec", "recipe", "epochs", value="x"), "recipe field epochs"),
        ("kd", setter("spec", "recipe", value=[1]), "spec field recipe"),
        ("kd", setter("spec", "vam", value={"groups": "4"}), "vam field groups"),
        ("kd", setter("spec", "teacher_sha256", value=EVIL), "spec teacher_sha256"),
        ("kd", setter("spec", "student_init_sha256", value=EVIL), "spec student_init_sha256"),
        ("kd", setter("spec", "data_sha256", value="ABC"), "spec data_sha256"),
        ("kd", setter("spec", "plugin_sha256", value={"p.py": EVIL}), "spec plugin_sha256['p.py']"),
        ("kd", setter("spec", "hp", "temperature", value=9.0), "is not its spec's hash"),
        ("kd", setter("run_id", value=EVIL), "run_id"),
    ],
)
def test_a_hostile_field_is_refused_naming_the_file_and_field(capsys, copy, method, edit, field):
    path = spoil(copy, method, edit)
    assert_refused(capsys, copy, path, field)


@pytest.mark.parametrize("command", [("check", "--baseline", "none.json"), ("report", "--format", "html")])
def test_check_and_every_format_read_through_the_same_check(capsys, copy, command):
    path = spoil(copy, "kd", setter("metrics", "last_top1", value=math.inf))
    assert_refused(capsys, copy, path, "metrics.last_top1", command=command)


# -- files in runs/ that are not one honest record --------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[]", "a JSON list"),
        (b"[" * 100_000 + b"]" * 100_000, "cannot read run record"),  # nested past the parser's recursion
        (b'{"schema": 1, "schema": 1}', "the key 'schema' appears twice"),
    ],
)
def test_a_file_that_is_no_record_is_named(capsys, copy, content, fragment):
    path = copy / "runs" / "aaaaaaaaaaaa.json"
    path.write_bytes(content)
    assert_refused(capsys, copy, path, fragment)


def test_a_file_too_big_to_be_a_record_is_not_read(capsys, copy, monkeypatch):
    monkeypatch.setattr(store, "MAX_RECORD_BYTES", 100_000)  # a real one is a few KB
    path = copy / "runs" / "000000000000.json"
    path.write_bytes(b'{"a": "' + b"x" * 100_000 + b'"}')
    assert_refused(capsys, copy, path, "more than a record's 100000")


def test_a_record_under_another_name_is_refused(capsys, copy):
    """Found under another run id, it would be taken for that run's result (a sweep's cache reads by name)."""
    source = record_file(copy, "kd")
    moved = copy / "runs" / "0123456789ab.json"
    moved.write_bytes(source.read_bytes())
    assert_refused(capsys, copy, moved, "is not its file's name")


def test_a_duplicate_key_cannot_hide_a_second_value(capsys, copy):
    path = record_file(copy, "kd")
    text = path.read_text()
    path.write_text(text.replace('"run_id":', '"run_id": "0123456789ab", "run_id":', 1))
    assert_refused(capsys, copy, path, "the key 'run_id' appears twice")


def test_a_symlink_in_runs_is_not_followed(capsys, copy, tmp_path):
    """A link out of the store (here to a valid record elsewhere, or a device) is refused, not read."""
    outside = tmp_path / "outside.json"
    source = record_file(copy, "kd")
    outside.write_bytes(source.read_bytes())
    source.unlink()
    source.symlink_to(outside)
    assert_refused(capsys, copy, source, "symbolic link", str(outside))
    source.unlink()
    source.symlink_to("/dev/zero")  # read whole, it would never end
    assert_refused(capsys, copy, source, "symbolic link")


def test_a_fifo_in_runs_does_not_hang_the_report(capsys, copy):
    fifo = copy / "runs" / "aaaaaaaaaaaa.json"
    os.mkfifo(fifo)
    assert_refused(capsys, copy, fifo, "not a regular file")


# -- rerun: a hash never names a file outside the store; a mistyped record is one line ---------------------
@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (setter("spec", "student_init_sha256", value=EVIL), "spec student_init_sha256"),
        (setter("environment", "threads", value="x"), "environment.threads"),
        (setter("environment", "threads", value=-3), "environment.threads"),
        (setter("spec", "seed", value="0"), "spec field seed"),
        (setter("spec", "precision", value=["fp32"]), "spec field precision"),
        (setter("spec", "recipe", "lr_decay_epochs", value=5), "recipe field lr_decay_epochs"),
        (setter("spec", "unknown", value=1), "unknown spec field(s) ['unknown']"),
    ],
)
def test_rerun_of_a_hostile_record_is_one_line_and_reads_nothing_outside(capsys, copy, edit, field):
    evil = copy.parent / "evil.pt"  # where <store>/inits/../../evil.pt leads
    evil.write_bytes(b"secret")
    path = spoil(copy, "student", edit)
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "rerun", str(path), "--out", str(copy.parent / "again"))
    assert_one_line_error(code, err, str(path), field)
    assert not (copy.parent / "again").exists() and not (copy / "reruns").exists()
    assert snapshot(copy) == before


def test_a_path_from_a_hash_is_refused_in_the_store_too():
    """Defence in depth: whoever builds a path from a hash gets a hash or an error."""
    for build in (
        lambda: store.student_init_path("store", EVIL),
        lambda: store.teacher_eval_path("store", "../" + "a" * 61, "synthetic"),
    ):
        with pytest.raises(ConfigError, match="64 lowercase hex"):
            build()


def test_rerun_takes_the_student_init_by_flag_and_checks_it(capsys, trained, tmp_path):
    """A run from `--student-init` reruns from the store's copy; without it the error names `--student-init`,
    which rerun has; a file of another SHA-256 is refused."""
    out = tmp_path / "store"
    init = next((trained / "models").glob("*.pt"))
    argv = ["run", *TINY, "--methods", "student", "--student-init", str(init), "--out", str(out)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    path = record_file(out, "student")
    kept = next((out / "inits").glob("*.pt"))
    moved = tmp_path / "init.pt"
    shutil.move(kept, moved)
    before = snapshot(out)
    code, _, err = run_cli(capsys, "rerun", str(path), "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "student init", "is missing", "pass --student-init PATH")
    code, _, err = run_cli(
        capsys, "rerun", str(path), "--student-init", str(path), "--out", str(tmp_path / "b")
    )
    assert_one_line_error(code, err, f"--student-init {path}", "SHA-256")
    code, printed, err = run_cli(
        capsys, "rerun", str(path), "--student-init", str(moved), "--out", str(tmp_path / "c")
    )
    assert code == 0 and "bit for bit" in printed, err
    assert snapshot(out) == before


@pytest.mark.parametrize("out", [".", "../store"])  # relative to the store: its own folder, spelt two ways
def test_rerun_into_the_records_own_store_is_refused(capsys, copy, monkeypatch, out):
    """`--out` naming the record's own store would overwrite the record the rerun is compared with."""
    monkeypatch.chdir(copy)
    path = record_file(copy, "kd")
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "rerun", str(path), "--out", out)
    assert_one_line_error(code, err, f"--out {out} is the store of record {path}", "another folder")
    assert snapshot(copy) == before and not (copy / "reruns").exists()


def test_rerun_of_a_folder_says_it_is_a_folder(capsys, copy):
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "rerun", str(copy / "runs"))
    assert_one_line_error(code, err, f"record {copy / 'runs'} is a directory, expected a file")
    assert snapshot(copy) == before
