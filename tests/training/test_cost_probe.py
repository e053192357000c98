"""The time ratio to the student (kdbench/training/ratios.py) describes the method, not the schedule:

- kd's and crd's ratios agree, within the probe's noise, whether their sweep trained cohorts or not
  (the ratio of epoch seconds it replaces did not: a cohort member's epoch shares the loop);
- the probe changes nothing of the run it times: models, optimizer state, random streams;
- the student baseline's ratio is 1 by definition (nothing is timed); a wrapped student's is timed;
  a teacher has none;
- a record's probe is checked where it is read, and a record written before the probe has none;
- on CUDA (skipped without it) the probe times synchronized wall seconds and keeps the CUDA stream.
"""

import copy
import math

import pytest
import torch
from conftest import make_trainer

from kdbench.core import store
from kdbench.core.catalog import Pair
from kdbench.core.records import record_problem
from kdbench.core.spec import Recipe, RunSpec
from kdbench.execution.sweep import Sweep, SweepRequest
from kdbench.training.ratios import MAX_TIMED_PAIRS, MIN_TIMED_PAIRS, probe_time_ratio, timed_pairs
from kdbench.wrappers.vam import VAMConfig

# 2 epochs of synthetic's 512 training images at batch 64: 16 steps, so the probe times its most pairs
TINY = Recipe(epochs=2, batch_size=64, lr=0.05, lr_decay_epochs=())
TEACHER = Recipe(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=(), train_subset=192)
# |log(ratio with cohorts / ratio without)|: above the spread of two probes of one method on a loaded 2-core
# machine, below what the ratio of epoch seconds it replaces gave (README, "Costs": figures and command)
TOLERANCE = 0.15


def sweep(out, cohort, **settings):
    request = SweepRequest(
        methods=["student", "kd", "crd"],
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=TINY,
        teacher_recipe=TEACHER,
        out=out,
        threads=1,
        cohort=cohort,
        **settings,
    )
    Sweep(request, progress=lambda _line: None).run()
    return {r["spec"]["method"]: r for r in store.load_records(out)}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """{method: record} of one sweep with cohorts and one without."""
    out = tmp_path_factory.mktemp("probe")
    return sweep(out / "cohort", cohort=True), sweep(out / "alone", cohort=False)


def test_the_ratio_to_the_student_does_not_depend_on_cohorts(swept):
    together, alone = ({m: r["overhead"] for m, r in records.items()} for records in swept)
    for method in ("kd", "crd"):
        on, off = together[method]["time_ratio_vs_student"], alone[method]["time_ratio_vs_student"]
        assert abs(math.log(on / off)) < TOLERANCE, f"{method}: {on:.3f} with cohorts, {off:.3f} without"
        assert on > 1 and off > 1, method  # a teacher forward and a method loss on top of the student's step
    for overhead in (together["kd"], alone["crd"]):
        probe = overhead["time_probe"]
        assert overhead["time_ratio_vs_student"] == probe["step_seconds"] / probe["student_step_seconds"]
        assert probe["pairs"] == MAX_TIMED_PAIRS and probe["clock"] == "process_cpu" and probe["seconds"] > 0
    assert together["student"]["time_ratio_vs_student"] == alone["student"]["time_ratio_vs_student"] == 1.0


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("pairs", -1, "overhead.time_probe.pairs must be a whole number >= 0"),
        ("seconds", math.inf, "overhead.time_probe.seconds must be a finite number >= 0"),
        ("ratio_quartiles", "1.2", "overhead.time_probe.ratio_quartiles must be a list"),
        ("clock", None, "overhead.time_probe has no clock"),
    ],
)
def test_a_record_s_probe_is_checked_where_it_is_read_and_older_records_have_none(
    swept, field, value, problem
):
    record = copy.deepcopy(swept[0]["kd"])
    name = f"{record['run_id']}.json"
    assert record_problem(record, name) is None
    probe = record["overhead"]["time_probe"]
    if value is None:
        del probe[field]
    else:
        probe[field] = value
    assert record_problem(record, name).startswith(problem)
    del record["overhead"]["time_probe"]  # a record written before the probe
    assert record_problem(record, name) is None


def test_with_the_probe_off_no_ratio_is_recorded_and_no_other_number_changes(swept, tmp_path):
    unprobed = sweep(tmp_path, cohort=True, time_probe=False)
    for method, record in unprobed.items():
        assert (
            record["overhead"]["time_ratio_vs_student"] is None and record["overhead"]["time_probe"] is None
        )
        probed = swept[0][method]
        assert record["run_id"] == probed["run_id"]  # a measurement setting, not part of the experiment
        assert record["history"][-1]["train_loss"] == probed["history"][-1]["train_loss"]
        assert record["metrics"] == probed["metrics"] and record["evaluation"] == probed["evaluation"]


def optimizer_state(optimizer):
    return copy.deepcopy(optimizer.state_dict())


def test_the_probe_changes_nothing_of_the_run_it_times(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, "crd")
    trainer.prepare()
    trainer.train_epoch(1)  # momentum buffers and a memory bank that moved
    member = trainer.member
    modules = {name: copy.deepcopy(getattr(member, name).state_dict()) for name in ("student", "method")}
    optimizer, rng = optimizer_state(member.optimizer), torch.get_rng_state()
    generator = member.generator.get_state()
    batch = next(iter(member.batches()))
    member.generator.set_state(generator)
    probed = probe_time_ratio(member, batch)
    assert probed["time_ratio_vs_student"] > 0 and probed["time_probe"]["pairs"] == MIN_TIMED_PAIRS
    for name, before in modules.items():
        after = getattr(member, name).state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before), name
    after = optimizer_state(member.optimizer)
    assert after["param_groups"] == optimizer["param_groups"]
    assert all(
        torch.equal(optimizer["state"][key]["momentum_buffer"], after["state"][key]["momentum_buffer"])
        for key in optimizer["state"]
    )
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(generator, member.generator.get_state())


@pytest.mark.parametrize(
    ("epochs", "images", "pairs"), [(1, 64, 2), (1, 256, 4), (2, 512, 8), (240, 50_000, 8)]
)
def test_the_probe_times_half_the_run_s_steps_within_its_bounds(epochs, images, pairs):
    spec = RunSpec(
        "kd", "resnet8", "synthetic", teacher="resnet14", recipe=Recipe(epochs=epochs, batch_size=32)
    )
    assert timed_pairs(spec, images) == pairs


@pytest.mark.parametrize(
    ("method", "fields", "expected"),
    [
        ("student", {}, 1.0),  # the baseline itself: 1 by definition, nothing timed
        ("student", {"kind": "teacher"}, None),  # a teacher has no student to be compared with
        ("student", {"wrappers": {"vam": VAMConfig()}}, "timed"),  # VAM's student is not the plain one
    ],
)
def test_the_baseline_is_one_by_definition_and_a_wrapped_student_is_timed(
    method, fields, expected, tiny_data, tmp_path
):
    member = make_trainer(tiny_data, tmp_path, method, **fields).member
    probed = probe_time_ratio(member, next(iter(member.batches())))
    if expected == "timed":
        assert probed["time_ratio_vs_student"] > 0 and probed["time_probe"]["pairs"] == MIN_TIMED_PAIRS
    else:
        assert probed == {"time_ratio_vs_student": expected, "time_probe": None}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_probe_times_synchronized_wall_seconds_and_keeps_the_cuda_stream(tiny_data, tmp_path):
    member = make_trainer(tiny_data, tmp_path, "kd", device="cuda").member
    cuda_rng = torch.cuda.get_rng_state()
    probed = probe_time_ratio(member, next(iter(member.batches())))
    assert probed["time_probe"]["clock"] == "cuda_synchronized_wall" and probed["time_ratio_vs_student"] > 0
    assert torch.equal(cuda_rng, torch.cuda.get_rng_state())
