"""A recipe's `test_subset` (issue 25): a stratified subset of the test split drawn with the fixed data seed
(kdbench/data/preparation.py), the same for every seed, in memory and streamed; the record's `data` counts
it; the board's caption says so; the run ids and records of runs on the whole split stay as they were; a
subset of the whole split or more is dropped; the teacher's cached accuracy is kept per test subset; a bad
value is one line, exit 2."""

import json
from dataclasses import replace

import pytest
import torch
from test_bad_input import TINY, assert_one_line_error, run_cli
from test_streaming import image_folder

from kdbench.core import store
from kdbench.core.errors import ConfigError
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import (
    SUBSET_SEED,
    StreamData,
    fit_subsets,
    prepare_data,
    split_sizes,
    stratified_subset,
)
from kdbench.execution.units import Worker, WorkerSettings
from kdbench.models import build_model
from kdbench.training.evaluation import evaluate

SYNTHETIC_TEST = 256  # the synthetic loader's test split (kdbench/data/synthetic.py)


def test_the_test_subset_is_stratified_and_drawn_with_the_fixed_data_seed():
    whole = prepare_data("synthetic", None, Recipe())
    subset = prepare_data("synthetic", None, Recipe(test_subset=50))
    assert len(whole.test) == SYNTHETIC_TEST and whole.test.labels.bincount().tolist() == [26] * 6 + [25] * 4
    assert split_sizes(subset) == {"train": 512, "val": 0, "test": 50}
    assert subset.test.labels.bincount(minlength=10).tolist() == [5] * 10  # the split's shares, rounded
    expected = stratified_subset(whole.test, 50, seed=SUBSET_SEED)
    assert torch.equal(subset.test.images, expected.images) and torch.equal(
        subset.test.labels, expected.labels
    )
    other_seed = stratified_subset(whole.test, 50, seed=SUBSET_SEED + 1)
    assert not torch.equal(
        expected.images, other_seed.images
    )  # the seed chooses: the check above means something
    assert torch.equal(subset.train.images, whole.train.images)  # training is untouched


def test_every_seed_is_tested_on_the_subsets_images_and_a_subset_is_its_own_data(tmp_path):
    worker = Worker(WorkerSettings(out=str(tmp_path)))
    specs = [
        RunSpec(
            method="student", student="resnet8", dataset="synthetic", seed=seed, recipe=Recipe(test_subset=40)
        )
        for seed in (0, 1)
    ]
    tested = [worker.data_of(spec) for spec in specs]
    assert tested[0] is tested[1] and len(tested[0].test) == 40
    whole = worker.data_of(replace(specs[0], recipe=Recipe()))
    assert len(whole.test) == SYNTHETIC_TEST  # not the subset cached under the same data key


def test_a_streamed_split_takes_the_same_subset_as_the_decoded_one(tmp_path):
    root = image_folder(tmp_path / "folder", side=16, train=6, test=4)  # 3 classes x 4 test images
    subsets = {
        loader: prepare_data(
            "imagefolder", str(root), Recipe(loader=loader, image_size=16, test_subset=6)
        ).test
        for loader in ("memory", "stream")
    }
    assert isinstance(subsets["stream"], StreamData) and len(subsets["stream"]) == 6
    assert subsets["stream"].labels.bincount().tolist() == [2, 2, 2]
    assert torch.equal(subsets["stream"].labels, subsets["memory"].labels)
    whole = prepare_data("imagefolder", str(root), Recipe(loader="stream", image_size=16)).test
    assert subsets["stream"].paths.tolist() == stratified_subset(whole, 6, SUBSET_SEED).paths.tolist()


def test_a_spec_on_the_whole_test_split_keeps_its_run_id_and_record():
    spec = RunSpec(
        method="kd",
        student="resnet8",
        dataset="fashion-mnist",
        teacher="resnet20",
        teacher_sha256="a" * 64,
        seed=1,
        hp={"temperature": 4.0},
        recipe=Recipe(epochs=2, lr_decay_epochs=(1,), train_subset=1500),
    )
    assert spec.run_id == "c55371c652de"  # computed with kdbench/core/spec.py before the field existed
    assert "test_subset" not in spec.to_dict()["recipe"]  # the record is the one written before it
    subset = replace(spec, recipe=replace(spec.recipe, test_subset=2000))
    assert subset.run_id != spec.run_id and subset.to_dict()["recipe"]["test_subset"] == 2000
    assert RunSpec.from_dict(subset.to_dict()) == subset and RunSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("asked", [SYNTHETIC_TEST, SYNTHETIC_TEST + 1])
def test_a_subset_of_the_whole_split_or_more_is_dropped(asked):
    fitted, warnings = fit_subsets("synthetic", None, Recipe(train_subset=100, test_subset=asked))
    assert fitted == Recipe(train_subset=100)
    if asked == SYNTHETIC_TEST:
        assert warnings == []
    else:
        assert warnings == [
            f"kdbench: warning: --test-subset {asked} exceeds the {SYNTHETIC_TEST} test images of synthetic; "
            f"testing on all {SYNTHETIC_TEST}"
        ]
    assert fit_subsets("synthetic", None, Recipe(test_subset=SYNTHETIC_TEST - 1)) == (
        Recipe(test_subset=SYNTHETIC_TEST - 1),
        [],
    )


def test_the_teachers_accuracy_is_measured_and_cached_per_test_subset(tmp_path):
    teacher = build_model("resnet8", num_classes=10).eval()  # untrained: its accuracy differs by images
    sha256 = "b" * 64
    subsets = (None, 30)
    specs = {
        n: RunSpec(
            method="kd",
            student="resnet8",
            dataset="synthetic",
            teacher="resnet8",
            teacher_sha256=sha256,
            recipe=Recipe(test_subset=n),
        )
        for n in subsets
    }
    worker = Worker(WorkerSettings(out=str(tmp_path)))
    expected = {}
    for n, spec in specs.items():
        data = worker.data_of(spec)
        expected[n] = evaluate(teacher, data.test, data.info, torch.device("cpu"))["top1"]
        assert worker.teacher_accuracy(spec, teacher, data)["test_top1"] == expected[n]
    assert expected[None] != expected[30]
    for n in subsets:
        assert (
            json.loads(store.teacher_eval_path(tmp_path, sha256, "synthetic", n).read_text())["test_top1"]
            == (expected[n])
        )
    fresh = Worker(WorkerSettings(out=str(tmp_path)))  # reads the store's cache, the subset's first
    for n in reversed(subsets):
        assert fresh.teacher_accuracy(specs[n], teacher, fresh.data_of(specs[n]))["test_top1"] == expected[n]


def test_a_run_on_a_test_subset_records_its_count_and_the_board_says_so(capsys, tmp_path):
    out = tmp_path / "store"
    code, stdout, err = run_cli(
        capsys, "run", *TINY, "--methods", "kd", "--seeds", "2", "--test-subset", "50", "--format", "markdown",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(path.read_text()) for path in (out / "runs").glob("*.json")]
    taught = [record for record in records if record["kind"] != "teacher"]
    assert len(taught) == 2 and {record["spec"]["seed"] for record in taught} == {0, 1}
    for record in taught:
        assert record["spec"]["recipe"]["test_subset"] == 50
        assert record["data"] == {"train": 128, "val": 0, "test": 50}
    teacher = next(record for record in records if record["kind"] == "teacher")
    assert teacher["data"]["test"] == SYNTHETIC_TEST  # the teacher recipe has no test subset
    measured = json.loads(
        store.teacher_eval_path(out, taught[0]["spec"]["teacher_sha256"], "synthetic", 50).read_text()
    )  # the students' records carry their teacher's accuracy on their own test images
    assert all(record["teacher"]["test_top1"] == measured["test_top1"] for record in taught)
    assert "on a stratified subset of 50 test images (test_subset" in stdout.splitlines()[0]


def test_a_subset_as_large_as_the_split_is_the_whole_splits_run(capsys, tmp_path):
    argv = [
        "run",
        *TINY,
        "--methods",
        "student",
        "--seeds",
        "1",
        "--format",
        "markdown",
        "--out",
        str(tmp_path),
    ]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0 and "1 trained" in err, err
    assert "on the test split," in stdout
    code, _, err = run_cli(capsys, *argv, "--test-subset", str(SYNTHETIC_TEST + 1))
    assert code == 0 and "0 trained, 1 cached" in err, err  # the same run id: nothing new to train
    assert err.count("--test-subset 257 exceeds the 256 test images of synthetic; testing on all 256") == 1
    code, stdout, err = run_cli(capsys, *argv, "--test-subset", "40")
    assert code == 0 and "1 trained" in err, err
    assert "on the test split, or a stratified subset of it (40 images)" in stdout


@pytest.mark.parametrize("value", ["-5", "1.5", "all"])
def test_a_bad_test_subset_is_one_line_exit_2(capsys, tmp_path, value):
    code, _, err = run_cli(capsys, "run", *TINY, "--test-subset", value, "--out", str(tmp_path))
    assert_one_line_error(code, err, "--test-subset")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_a_recipe_refuses_a_test_subset_that_is_no_whole_number_from_1(value):
    with pytest.raises(ConfigError, match="test.subset"):
        Recipe.from_dict({"test_subset": value})


def test_a_sweep_files_bad_test_subset_is_one_line_exit_2(capsys, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("recipe: {epochs: 1, test_subset: 0}\n")
    code, _, err = run_cli(capsys, "run", *TINY, "--config", str(sweep), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "test-subset")
