"""kdbench/devtools/compare_stores.py: two stores agree when only timings differ, every other
difference (a number, a run, a model tensor) is found, and a file the store's readers refuse is one
line naming it."""

import json

import pytest
import torch

from kdbench.core.spec import RunSpec
from kdbench.core.store import new_record
from kdbench.devtools.compare_stores import main

METRICS = {"last_top1": 71.5, "last_top5": 98.0, "best_top1": 71.5, "best_top5": 98.0, "best_epoch": 1}


def record(seed=0, train_loss=1.25, epoch_seconds=3.0, wall_seconds=10.0, threads=1, commit="0" * 40):
    """A record as kdbench writes it (its run id its spec's hash), with the values a test varies."""
    spec = RunSpec(method="student", student="resnet8", dataset="synthetic", seed=seed)
    history = [{"epoch": 1, "train_loss": train_loss, "epoch_seconds": epoch_seconds, "test_top1": 71.5}]
    result = {"history": history, "metrics": METRICS, "wall_seconds": wall_seconds}
    environment = {"threads": threads, "git_commit": commit}
    return new_record(spec.to_dict(), spec.run_id, "distill", "done", environment, result)


def _store(root, records, weight):
    (root / "runs").mkdir(parents=True)
    for each in records:
        (root / "runs" / f"{each['run_id']}.json").write_text(json.dumps(each))
    (root / "teachers").mkdir()
    torch.save({"weight": weight}, root / "teachers" / "t.pt")
    return root


def test_stores_differing_only_in_timings_agree(tmp_path, capsys):
    timed = record(epoch_seconds=9.0, wall_seconds=99.0, commit="1" * 40)
    a = _store(tmp_path / "a", [record()], torch.ones(3))
    b = _store(tmp_path / "b", [timed], torch.ones(3))
    assert main([str(a), str(b)]) == 0
    assert "identical: 1 records and 1 model files" in capsys.readouterr().out


def test_a_changed_number_run_or_tensor_is_reported(tmp_path, capsys):
    a = _store(tmp_path / "a", [record()], torch.ones(3))
    changed = record(train_loss=1.2500001, threads=2)
    b = _store(tmp_path / "b", [changed, record(seed=1)], torch.tensor([1.0, 1.0, 1.0 + 1e-6]))
    assert main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"runs/{changed['run_id']}.json.history[0].train_loss" in out
    assert f"runs/{record(seed=1)['run_id']}.json: only in B" in out
    assert "teachers/t.pt: tensors differ" in out
    assert "environment.threads: 1 != 2" in out
    assert "git_commit" not in out
    assert "4 difference(s)" in out


def test_an_unreadable_record_or_model_file_is_one_line_naming_it(tmp_path, capsys):
    a = _store(tmp_path / "a", [record()], torch.ones(3))
    b = _store(tmp_path / "b", [record()], torch.ones(3))
    (b / "runs" / f"{record()['run_id']}.json").write_text('{"run_id": ')
    with pytest.raises(SystemExit) as exit_info:
        main([str(a), str(b)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"cannot read run record {b}/runs/" in err and "Traceback" not in err
    b = _store(tmp_path / "c", [record()], torch.ones(3))
    (b / "teachers" / "t.pt").write_bytes(b"not torch")
    with pytest.raises(SystemExit) as exit_info:
        main([str(a), str(b)])
    assert exit_info.value.code == 2 and "model file" in capsys.readouterr().err
