"""`kdbench rerun`: a record alone reproduces its numbers; a difference or a missing teacher is reported."""

import json
import shutil

import pytest

from kdbench.cli import main
from kdbench.core import store

TINY = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "2", "--teacher-epochs", "1"]
TINY += ["--train-subset", "128", "--vam", "off", "--jobs", "1", "--methods", "student,kd", "--format", "csv"]
TINY += ["--time-probe", "off"]  # no test here reads time / student


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    assert main(["run", *TINY, "--out", str(out)]) == 0
    records = {r["spec"]["method"]: r for r in store.load_records(out) if r["kind"] != "teacher"}
    return out, records


def test_a_record_alone_reproduces_its_numbers_bit_for_bit(trained, tmp_path, capsys):
    out, records = trained
    record_file = store.record_path(out, records["kd"]["run_id"])
    assert main(["rerun", str(record_file), "--out", str(tmp_path / "again")]) == 0
    assert "bit for bit" in capsys.readouterr().out
    again = store.find_record(tmp_path / "again", records["kd"]["run_id"])
    assert again["history"][-1]["train_loss"] == records["kd"]["history"][-1]["train_loss"]


def test_a_changed_number_is_reported_with_exit_1(trained, tmp_path, capsys):
    out, records = trained
    copy = tmp_path / "store"
    shutil.copytree(out, copy)
    record_file = store.record_path(copy, records["student"]["run_id"])
    tampered = json.loads(record_file.read_text())
    tampered["metrics"]["last_top1"] += 1.0
    tampered["history"][0]["train_loss"] += 1e-9
    record_file.write_text(json.dumps(tampered))
    assert main(["rerun", str(record_file)]) == 1
    printed = capsys.readouterr().out
    assert "metrics.last_top1" in printed and "epoch 1 train_loss" in printed
    assert (copy / "reruns" / records["student"]["run_id"]).is_dir()  # the default out: inside the store


def test_a_teacher_not_in_the_store_or_of_another_sha_is_one_line(trained, tmp_path, capsys):
    out, records = trained
    copy = tmp_path / "store"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "teachers")
    record_file = store.record_path(copy, records["kd"]["run_id"])
    assert main(["rerun", str(record_file)]) == 2
    assert "pass --teacher PATH" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the teacher")
    assert main(["rerun", str(record_file), "--teacher", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(other) in err and "SHA-256" in err
    assert main(["rerun", str(tmp_path / "missing.json")]) == 2
