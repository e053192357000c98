"""kdbench/devtools/compare_stores.py: two stores agree when only timings differ, and every other
difference (a number, a run, a model tensor) is found."""

import json

import torch

from kdbench.devtools.compare_stores import main

RECORD = {
    "run_id": "abcdef012345",
    "metrics": {"last_top1": 71.5},
    "history": [{"epoch": 1, "train_loss": 1.25, "epoch_seconds": 3.0}],
    "wall_seconds": 10.0,
    "created": "2026-12-06T00:00:00+00:00",
    "environment": {"threads": 1, "git_commit": "0" * 40},
}


def _store(root, record, weight):
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "abcdef012345.json").write_text(json.dumps(record))
    (root / "teachers").mkdir()
    torch.save({"weight": weight}, root / "teachers" / "t.pt")
    return root


def test_stores_differing_only_in_timings_agree(tmp_path, capsys):
    timed = dict(
        RECORD,
        wall_seconds=99.0,
        created="2027-01-01",
        history=[dict(RECORD["history"][0], epoch_seconds=9.0)],
    )
    a = _store(tmp_path / "a", RECORD, torch.ones(3))
    b = _store(tmp_path / "b", timed, torch.ones(3))
    assert main([str(a), str(b)]) == 0
    assert "identical: 1 records and 1 model files" in capsys.readouterr().out


def test_a_changed_number_run_or_tensor_is_reported(tmp_path, capsys):
    changed = dict(
        RECORD, history=[dict(RECORD["history"][0], train_loss=1.2500001)], environment={"threads": 2}
    )
    a = _store(tmp_path / "a", RECORD, torch.ones(3))
    b = _store(tmp_path / "b", changed, torch.tensor([1.0, 1.0, 1.0 + 1e-6]))
    (b / "runs" / "ffffff012345.json").write_text(json.dumps(RECORD))
    assert main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "runs/abcdef012345.json.history[0].train_loss" in out
    assert "runs/ffffff012345.json: only in B" in out
    assert "teachers/t.pt: tensors differ" in out
    assert "environment.threads: 1 != 2" in out
    assert "environment.git_commit: only in A" not in out
    assert "4 difference(s)" in out
