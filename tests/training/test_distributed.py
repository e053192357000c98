"""One run on two processes: torchrun with gloo on the CPU (kdbench/core/distributed.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.core import store

RUN = [
    "run",
    "--dataset",
    "synthetic",
    "--pairs",
    "resnet14:resnet8",
    "--epochs",
    "8",
    "--train-subset",
    "512",
]
RUN += ["--vam", "off", "--teacher-epochs", "1"]
# Per-rank BatchNorm statistics and halved per-rank batches make a 2-process run another experiment
# than a 1-process one with the same global batch: on this task both reach ~97 % top-1 (seeds 0, 1:
# 97.27 +- 1.10 vs 97.07 +- 1.93 measured); a regression of the sharding or the averaging lands far below.
TOLERANCE_POINTS = 5.0


def torchrun(*argv, processes=2):
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [launcher, "--nproc-per-node", str(processes), "-m", "kdbench", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_process_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(*RUN, "--methods", "student", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_processes_train_one_run_and_write_one_record(two_process_store):
    records = store.load_records(two_process_store)
    assert len(records) == 1 and records[0]["status"] == "done"
    assert records[0]["spec"]["world_size"] == 2 and records[0]["environment"]["world_size"] == 2
    assert records[0]["environment"]["process_group"] == "gloo"
    assert not list((two_process_store / "checkpoints").glob("*.pt"))


def test_torchrun_with_one_process_joins_a_process_group(tmp_path):
    """What tests/gpu_check.sh does with NCCL on one card: one process still joins a group."""
    # one epoch (the last --epochs counts): what is checked is the group it joins, not its accuracy
    done = torchrun(*RUN, "--epochs", "1", "--methods", "student", "--out", str(tmp_path), processes=1)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = store.load_records(tmp_path)
    assert record["environment"]["process_group"] == "gloo" and record["spec"]["world_size"] == 1


def test_its_accuracy_is_the_one_process_run_within_the_stated_tolerance(two_process_store, tmp_path):
    from kdbench.cli import main

    assert main([*RUN, "--methods", "student", "--out", str(tmp_path), "--jobs", "1"]) == 0
    (one,) = store.load_records(tmp_path)
    (two,) = store.load_records(two_process_store)
    assert one["run_id"] != two["run_id"]  # the world size is part of the spec
    assert abs(one["metrics"]["last_top1"] - two["metrics"]["last_top1"]) <= TOLERANCE_POINTS


def test_a_memory_bank_method_is_refused_before_training(tmp_path):
    done = torchrun(*RUN, "--methods", "crd", "--out", str(tmp_path))
    # each rank exits 2 with the one-line error; torchrun reports the ranks' exit codes and fails
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert "kdbench: error: crd cannot train on 2 processes" in done.stderr
    assert not (tmp_path / "runs").exists()


def _train_one_epoch_on_rank(rank, init_file, out):
    import hashlib

    import torch
    import torch.distributed as dist
    from conftest import make_trainer

    from kdbench.data import PreparedData, load_dataset

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info, train, test = load_dataset("synthetic", num_train=128, num_test=64, image_size=16)
    trainer = make_trainer(PreparedData(info, train, test, None), out, "fitnet")
    seen = torch.cat([indices for _, _, indices in trainer.batches()])
    trainer.generator.manual_seed(0)
    trainer.train_epoch(1)
    trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trained)).hexdigest()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"digest": digest, "seen": seen.tolist()}))
    dist.destroy_process_group()


def test_ranks_see_disjoint_shards_and_end_with_identical_weights(tmp_path):
    """What DDP guarantees, checked on two gloo processes: the student's and the method's
    trainable weights are the same on every rank after the steps; each rank saw its own half."""
    import torch.multiprocessing

    torch.multiprocessing.spawn(
        _train_one_epoch_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["digest"] == second["digest"]
    assert not set(first["seen"]) & set(second["seen"]) and len(first["seen"] + second["seen"]) == 128
