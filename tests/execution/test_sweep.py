"""The engine and the sweep end to end on the synthetic dataset: records, cache, resume,
reproducibility, failures that do not stop the sweep, teacher checkpoints."""

import json
from dataclasses import replace

import pytest
import torch

from kdbench.core import store
from kdbench.core.catalog import Pair
from kdbench.core.spec import Recipe
from kdbench.core.store import CheckpointError
from kdbench.execution.sweep import Sweep, SweepRequest
from kdbench.wrappers.vam import VAMConfig

TINY = Recipe(epochs=2, batch_size=64, lr=0.05, lr_decay_epochs=(1,), train_subset=192)
TEACHER = Recipe(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=(), train_subset=192)


def request(out, **changes):
    # time_probe off unless a test reads time / student (those say time_probe=True): the probe's
    # steps would double these tiny runs, and what it measures is tests/training/test_cost_probe.py's
    base = SweepRequest(
        methods=["student", "kd"],
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=TINY,
        teacher_recipe=TEACHER,
        out=out,
        time_probe=False,
    )
    return replace(base, **changes)


def quiet(_line):
    pass


def records_by_method(out):
    return {(r["spec"]["method"], bool(r["spec"]["vam"])): r for r in store.load_records(out)}


def test_sweep_writes_one_complete_record_per_run(tmp_path):
    summary = Sweep(request(tmp_path, vam_modes=[False, True], time_probe=True), progress=quiet).run()
    assert len(summary.done) == 4 and not summary.failed
    records = records_by_method(tmp_path)
    assert set(records) == {("student", False), ("student", True), ("kd", False), ("kd", True)}
    kd = records[("kd", True)]
    assert kd["status"] == "done" and len(kd["history"]) == 2
    assert 0.0 <= kd["metrics"]["last_top1"] <= 100.0
    overhead = kd["overhead"]
    assert overhead["teacher_flops_per_image"] > 0
    assert overhead["train_flops_per_image"] > overhead["teacher_flops_per_image"]
    assert overhead["extra_trainable_params"] > 0  # VAM attention logits
    assert overhead["time_ratio_vs_student"] > 0
    assert overhead["export_max_abs_error"] < 1e-5
    plain = records[("kd", False)]["overhead"]
    assert overhead["deploy_params"] == plain["deploy_params"]  # the fold adds nothing at inference
    assert overhead["deploy_flops_per_image"] == plain["deploy_flops_per_image"]
    assert records[("student", False)]["overhead"]["time_ratio_vs_student"] == 1.0
    assert set(kd["vam"]) and all(v >= 0 for v in kd["vam"].values())
    assert kd["spec"]["teacher_sha256"] and kd["environment"]["torch"] == torch.__version__
    teachers = store.load_records(tmp_path, kind="teacher")
    assert len(teachers) == 1 and (tmp_path / teachers[0]["checkpoint"]["path"]).exists()
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # finished runs leave no checkpoint


def test_rerun_is_a_cache_hit_and_same_seed_reproduces(tmp_path):
    first = Sweep(request(tmp_path / "a"), progress=quiet).run()
    again = Sweep(request(tmp_path / "a"), progress=quiet).run()
    assert again.cached == first.done and not again.done
    Sweep(request(tmp_path / "b"), progress=quiet).run()
    a, b = records_by_method(tmp_path / "a"), records_by_method(tmp_path / "b")
    for key in a:
        assert a[key]["run_id"] == b[key]["run_id"]
        assert a[key]["metrics"] == b[key]["metrics"]
        assert [h["train_loss"] for h in a[key]["history"]] == [h["train_loss"] for h in b[key]["history"]]


def test_a_pool_of_workers_gives_the_numbers_of_one_process(tmp_path):
    shared = dict(vam_modes=[False, True], threads=1)
    serial = Sweep(request(tmp_path / "serial", **shared), progress=quiet).run()
    pooled = Sweep(request(tmp_path / "pool", jobs=2, time_probe=True, **shared), progress=quiet).run()
    # equal run ids: the teacher trained in a worker has the checkpoint (SHA-256) of the serial one
    assert sorted(pooled.done) == sorted(serial.done) and len(serial.done) == 4
    a, b = records_by_method(tmp_path / "serial"), records_by_method(tmp_path / "pool")
    for key in a:
        assert a[key]["metrics"] == b[key]["metrics"]
        assert [h["train_loss"] for h in a[key]["history"]] == [h["train_loss"] for h in b[key]["history"]]
        assert b[key]["environment"]["threads"] == 1 and b[key]["environment"]["concurrent_runs"] == 2
        assert b[key]["overhead"]["time_ratio_vs_student"] > 0  # filled after the pool, baseline or not


def test_pairs_sharing_a_student_share_its_baseline_run(tmp_path):
    pairs = [Pair("resnet14", "resnet8"), Pair("resnet20", "resnet8")]
    summary = Sweep(request(tmp_path, pairs=pairs, threads=1, jobs=2), progress=quiet).run()
    assert len(summary.done) == 3 and len(set(summary.done)) == 3  # one student, two kd
    assert len(store.load_records(tmp_path, kind="teacher")) == 2


def test_a_pool_records_a_failed_run_and_goes_on(tmp_path):
    summary = Sweep(
        request(tmp_path, hp_overrides={"kd": {"temperature": 0.0}}, threads=1, jobs=2), progress=quiet
    ).run()
    assert len(summary.failed) == 1 and len(summary.done) == 1
    assert "non-finite loss" in records_by_method(tmp_path)[("kd", False)]["error"]


class InterruptAfterFirstEpoch:
    def __init__(self):
        self.fired = False

    def __call__(self, line):
        if "epoch 1/2" in line and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    uninterrupted = tmp_path / "whole"
    Sweep(request(uninterrupted, methods=["kd"]), progress=quiet).run()
    interrupted = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Sweep(request(interrupted, methods=["kd"]), progress=InterruptAfterFirstEpoch()).run()
    assert not store.load_records(interrupted)  # nothing half-written
    assert list((interrupted / "checkpoints").glob("*.pt"))
    lines = []
    Sweep(request(interrupted, methods=["kd"]), progress=lines.append).run()
    assert any("resuming" in line for line in lines)
    whole, cut = (
        records_by_method(uninterrupted)[("kd", False)],
        records_by_method(interrupted)[("kd", False)],
    )
    assert cut["metrics"] == whole["metrics"]
    assert [h["train_loss"] for h in cut["history"]] == [h["train_loss"] for h in whole["history"]]


def test_non_finite_loss_fails_that_run_only(tmp_path):
    summary = Sweep(request(tmp_path, hp_overrides={"kd": {"temperature": 0.0}}), progress=quiet).run()
    assert len(summary.failed) == 1 and len(summary.done) == 1
    records = records_by_method(tmp_path)
    assert records[("student", False)]["status"] == "done"
    failed = records[("kd", False)]
    assert failed["status"] == "failed" and "non-finite loss" in failed["error"]


def test_a_pair_the_method_cannot_serve_is_refused_and_the_sweep_goes_on(tmp_path):
    # FSP needs equal channels layer by layer: resnet8x4 (32..256) vs resnet8 (16..64)
    summary = Sweep(
        request(tmp_path, methods=["fsp", "kd"], pairs=[Pair("resnet8x4", "resnet8")]), progress=quiet
    ).run()
    assert len(summary.failed) == 1 and len(summary.done) == 1
    failed = records_by_method(tmp_path)[("fsp", False)]
    assert failed["error"].startswith("fsp:") and failed["history"] == []


def test_teacher_checkpoint_checks(tmp_path):
    Sweep(request(tmp_path / "s", methods=["kd"]), progress=quiet).run()
    teacher = store.load_records(tmp_path / "s", kind="teacher")[0]
    checkpoint = tmp_path / "s" / teacher["checkpoint"]["path"]
    # a good checkpoint passed with --teacher is used as is
    Sweep(request(tmp_path / "given", methods=["kd"], teacher_path=str(checkpoint)), progress=quiet).run()
    # wrong architecture: the error names both
    with pytest.raises(CheckpointError, match="is a 'resnet14', not a 'resnet20'"):
        Sweep(
            request(
                tmp_path / "w",
                methods=["kd"],
                pairs=[Pair("resnet20", "resnet8")],
                teacher_path=str(checkpoint),
            ),
            progress=quiet,
        ).run()
    # corrupt file
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        Sweep(request(tmp_path / "c", methods=["kd"], teacher_path=str(corrupt)), progress=quiet).run()
    # a cached teacher whose file no longer matches its record is refused
    checkpoint.write_bytes(checkpoint.read_bytes() + b"tampered")
    with pytest.raises(CheckpointError, match="SHA-256"):
        Sweep(request(tmp_path / "s", methods=["kd"], force=False, seeds=[1]), progress=quiet).run()


def test_record_alone_reruns_the_spec(tmp_path):
    from kdbench.core.spec import RunSpec

    Sweep(
        request(tmp_path, methods=["kd"], vam_modes=[True], vam_configs=[VAMConfig(groups=2)]), progress=quiet
    ).run()
    record = records_by_method(tmp_path)[("kd", True)]
    spec = RunSpec.from_dict(json.loads(json.dumps(record["spec"])))
    assert spec.run_id == record["run_id"] and spec.wrappers["vam"].groups == 2


class _RunsCode:
    """A pickle that runs a shell command when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_resume_checkpoint_is_refused_without_running_its_code(tmp_path):
    from kdbench.execution.sweep import fit_to_data, specs_for_pair

    marker = tmp_path / "code-ran"
    # the spec as the sweep plans it: with the data's identity
    sweep_request = fit_to_data(request(tmp_path / "store", methods=["student"]), quiet)
    (spec,) = specs_for_pair(sweep_request, sweep_request.pairs[0], None)
    payload = {"run_id": spec.run_id, "epoch": 1, "student": _RunsCode(marker)}
    store.atomic_torch_save(store.checkpoint_path(sweep_request.out, spec.run_id), payload)
    with pytest.raises(CheckpointError, match="unreadable"):
        Sweep(sweep_request, progress=quiet).run()
    assert not marker.exists()


def test_a_pool_worker_that_cannot_start_fails_the_sweep_with_its_own_error(tmp_path):
    """No restart loop: every worker fails the same way, and the sweep ends with that error."""
    from kdbench.execution.backends import WorkerStartupError

    if torch.cuda.is_available():
        pytest.skip("needs a machine where device 'cuda' cannot start")
    sweep_request = request(tmp_path, methods=["student"], device="cuda", jobs=2, threads=1)
    with pytest.raises(WorkerStartupError, match="failed to start: .*(CUDA|NVIDIA|cuda)"):
        Sweep(sweep_request, progress=quiet).run()
    assert not store.load_records(tmp_path)
