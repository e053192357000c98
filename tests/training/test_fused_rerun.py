"""`kdbench rerun` of a fused record (kdbench/execution/rerun.py): the record names its fused group
(`environment.fused_group`, not the run id), the rerun trains that group fused again, bit for bit."""

import json

import pytest

from kdbench.cli import main
from kdbench.core import store

TINY = ["--dataset", "synthetic", "--pairs", "resnet14:resnet8", "--epochs", "2", "--teacher-epochs", "1"]
TINY += ["--train-subset", "128", "--vam", "off", "--jobs", "1", "--format", "csv"]


@pytest.fixture(scope="module")
def fused_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    assert main(["run", *TINY, "--methods", "kd,dkd,fitnet", "--fuse", "on", "--out", str(out)]) == 0
    return out, {r["spec"]["method"]: r for r in store.load_records(out)}


def test_a_fused_record_names_its_group_and_its_rerun_fuses_it_again_bit_for_bit(
    fused_store, tmp_path, capsys
):
    out, records = fused_store
    group = records["kd"]["environment"]["fused_group"]
    assert group == sorted(group) and {records["kd"]["run_id"], records["dkd"]["run_id"]} <= set(group)
    assert records["dkd"]["environment"]["fused_group"] == group
    assert records["fitnet"]["environment"]["fused_group"] == []  # trained with --fuse on, alone
    assert (
        main(["rerun", str(store.record_path(out, records["dkd"]["run_id"])), "--out", str(tmp_path / "a")])
        == 0
    )
    assert "bit for bit" in capsys.readouterr().out
    again = {r["run_id"]: r for r in store.load_records(tmp_path / "a")}
    assert sorted(again) == group  # the group, trained together
    assert again[records["dkd"]["run_id"]]["environment"]["fused_group"] == group
    assert again[records["dkd"]["run_id"]]["environment"]["fused_style"] == "channels"
    assert (
        main(
            ["rerun", str(store.record_path(out, records["fitnet"]["run_id"])), "--out", str(tmp_path / "b")]
        )
        == 0
    )
    assert "bit for bit" in capsys.readouterr().out


def test_a_fused_record_whose_group_is_not_in_its_store_is_one_line(fused_store, tmp_path, capsys):
    out, records = fused_store
    lonely = tmp_path / "lonely"
    (lonely / "runs").mkdir(parents=True)
    record = records["kd"]
    (lonely / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))
    for folder in ("teachers", "models"):
        if (out / folder).is_dir():
            (lonely / folder).symlink_to(out / folder)
    assert (
        main(["rerun", str(store.record_path(lonely, record["run_id"])), "--out", str(tmp_path / "c")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was fused with run" in err[0] and records["dkd"]["run_id"] in err[0]
