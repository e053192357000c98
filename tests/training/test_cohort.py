"""Cohort training is an execution strategy, never a protocol change: a member's record is
bit-identical to the same spec trained alone (kdbench/training/cohort.py)."""

import hashlib
from dataclasses import replace

import pytest

from kdbench.core import store
from kdbench.core.catalog import Pair
from kdbench.core.spec import Recipe
from kdbench.execution.sweep import Sweep, SweepRequest
from kdbench.training.cohort import plan_cohorts

TINY = Recipe(epochs=2, batch_size=64, lr=0.05, lr_decay_epochs=(1,), train_subset=192)
TEACHER = Recipe(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=(), train_subset=192)
# a logit method, feature methods (one with a memory bank), one with an init stage, the baseline
METHODS = ["student", "kd", "fitnet", "crd", "ab"]
TIMING = {
    "epoch_seconds",
    "time_ratio_vs_student",
    "time_probe",
    "wall_seconds",
    "throughput_img_s",
    "created",
    "environment",
}


def request(out, **changes):
    # time_probe off: these tests compare records without their timings, and the probe's own
    # guarantee (it changes nothing, cohort or not) is tests/training/test_cost_probe.py's
    base = SweepRequest(
        methods=METHODS,
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=TINY,
        teacher_recipe=TEACHER,
        vam_modes=[False, True],
        out=out,
        threads=1,
        time_probe=False,
    )
    return replace(base, **changes)


def quiet(_line):
    pass


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def stored(out):
    records = {r["run_id"]: r for r in store.load_records(out)}
    weights = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "models").glob("*.pt")}
    return records, weights


@pytest.fixture(scope="module")
def solo_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("solo")
    Sweep(request(out, cohort=False, seeds=[0, 1]), progress=quiet).run()
    return out


def test_cohort_members_equal_their_solo_runs_bit_for_bit(solo_store, tmp_path):
    lines = []
    Sweep(request(tmp_path, seeds=[0, 1]), progress=lines.append).run()
    solo, solo_weights = stored(solo_store)
    together, weights = stored(tmp_path)
    assert sorted(together) == sorted(solo) and len(solo) == 2 * 2 * len(METHODS)
    for run_id, record in together.items():
        assert without_timing(record) == without_timing(solo[run_id]), record["spec"]["method"]
    assert weights == solo_weights  # the deployed students, byte for byte
    sizes = {r["environment"]["cohort_size"] for r in together.values()}
    assert max(sizes) > 1, "no cohort was formed"


def test_a_failing_member_is_recorded_and_the_others_go_on(solo_store, tmp_path):
    summary = Sweep(request(tmp_path, hp_overrides={"kd": {"temperature": 0.0}}), progress=quiet).run()
    records, _ = stored(tmp_path)
    failed = [records[run_id] for run_id in summary.failed]
    assert failed and all(r["spec"]["method"] == "kd" and "non-finite" in r["error"] for r in failed)
    solo, _ = stored(solo_store)
    for run_id in summary.done:  # the members that went on are the solo runs, bit for bit
        if records[run_id]["kind"] == "distill":
            assert without_timing(records[run_id]) == without_timing(solo[run_id])


class InterruptAfter:
    def __init__(self, fragment):
        self.fragment, self.fired = fragment, False

    def __call__(self, line):
        if self.fragment in line and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_an_interrupted_cohort_resumes_only_its_unfinished_members(solo_store, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Sweep(
            request(tmp_path), progress=InterruptAfter("fitnet resnet14→resnet8 synthetic seed=0 epoch 1/2")
        ).run()
    assert not [
        r for r in store.load_records(tmp_path) if r["kind"] == "distill" and r["spec"]["method"] != "student"
    ]
    lines = []
    summary = Sweep(request(tmp_path), progress=lines.append).run()
    assert any("resuming" in line for line in lines)
    records, _ = stored(tmp_path)
    solo, _ = stored(solo_store)
    for run_id in summary.done + summary.cached:
        assert without_timing(records[run_id]) == without_timing(solo[run_id])


def test_cohorts_group_by_seed_and_recipe_and_feed_every_worker():
    from kdbench.core.spec import RunSpec

    specs = [RunSpec(m, "resnet8", "synthetic", seed=s, recipe=TINY) for s in (0, 1) for m in ("a", "b", "c")]
    assert [[s.method for s in c] for c in plan_cohorts(specs, jobs=1)] == [["a", "b", "c"], ["a", "b", "c"]]
    assert all(len({s.seed for s in c}) == 1 for c in plan_cohorts(specs, jobs=4))
    assert len(plan_cohorts(specs, jobs=4)) == 4  # two parts per seed: every worker has a unit
    three_seeds = [RunSpec(m, "resnet8", "synthetic", seed=s, recipe=TINY) for s in (0, 1, 2) for m in "abcd"]
    assert len(plan_cohorts(three_seeds, jobs=2)) == 6  # 3 rounds of half cohorts beat 2 rounds of whole ones
    assert plan_cohorts(specs, jobs=2, enabled=False) == [[s] for s in specs]


def test_the_loop_records_each_members_failure_and_trains_the_others_as_alone(tmp_path):
    """One loop for a cohort and a run alone: a member refused at construction (a pair its method
    cannot serve) or failing in a step (non-finite loss) is recorded with its error, in its place,
    and the member beside it trains exactly as alone; a run alone raises the same failures."""
    import torch

    from kdbench.core.spec import RunSpec
    from kdbench.data import PreparedData, load_dataset
    from kdbench.methods.base import PairNotSupportedError, method_class
    from kdbench.models import build_model
    from kdbench.training.engine import Cohort, NonFiniteLossError, train

    info, train_split, test = load_dataset("synthetic", num_train=64, num_test=32, image_size=16)
    data = PreparedData(info, train_split, test, None)
    torch.manual_seed(1)
    teacher = build_model("vgg8", num_classes=info.num_classes, in_chans=info.in_chans)  # 4 stages, resnet8 3

    def spec(method, **hp):
        cls = method_class(method)
        recipe = Recipe(epochs=2, batch_size=32, lr_decay_epochs=())
        return RunSpec(method, "resnet8", "synthetic", teacher="vgg8", hp=cls.resolve_hp(hp), recipe=recipe)

    refused, diverging, healthy = spec("at"), spec("kd", temperature=0.0), spec("kd")
    options = dict(
        teacher=teacher, device=torch.device("cpu"), progress=quiet, progress_bar=False, time_probe=False
    )
    trained = Cohort([refused, diverging, healthy], data, out=tmp_path / "cohort", **options).run()
    assert [t.spec for t in trained] == [refused, diverging, healthy]
    assert isinstance(trained[0].error, PairNotSupportedError) and trained[0].result is None
    assert isinstance(trained[1].error, NonFiniteLossError) and trained[1].result is None
    alone, alone_state = train(healthy, data, out=tmp_path / "alone", **options)
    assert trained[2].error is None
    assert without_timing(trained[2].result["history"]) == without_timing(alone["history"])
    state = trained[2].result["final_state"]
    assert state.keys() == alone_state.keys() and all(torch.equal(state[k], alone_state[k]) for k in state)
    with pytest.raises(PairNotSupportedError):
        train(refused, data, out=tmp_path / "refused", **options)
    with pytest.raises(NonFiniteLossError):
        train(diverging, data, out=tmp_path / "diverging", **options)
