"""The identity of the data is part of every run (issue 22, defect 2): two image folders trained into
one store are two sets of runs and two teachers, never "cached" across folders nor compared on one
board; a `--train-subset` larger than the data is recorded as what was trained; a record is not rerun
on other data. Also the digests themselves (kdbench/data/identity.py; `data_digest` in
kdbench/data/preparation.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from test_bad_input import assert_one_line_error, run_cli

from kdbench.core import store
from kdbench.core.spec import Recipe
from kdbench.data import data_digest, load_dataset, prepare_data

CLASSES = ("ant", "bee")


def image_folder(root, seed, train=8, test=2, side=16):
    """root/train/<class>/*.png and root/val/<class>/*.png of seeded noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return root


# student and kd: a teacher is trained (or found cached) and distilled from
RUN = ["run", "--dataset", "imagefolder", "--pairs", "resnet14:resnet8", "--methods", "student,kd"]
RUN += ["--epochs", "1", "--teacher-epochs", "1", "--vam", "off", "--jobs", "1", "--batch-size", "8"]


def test_a_second_folder_in_the_same_store_trains_its_own_runs_and_teacher(tmp_path, capsys):
    first, second = image_folder(tmp_path / "a", seed=0), image_folder(tmp_path / "b", seed=1)
    out = str(tmp_path / "store")
    code, _, err_first = run_cli(capsys, *RUN, "--data-root", str(first), "--out", out)
    assert code == 0, err_first
    code, _, err_second = run_cli(capsys, *RUN, "--data-root", str(second), "--out", out)
    assert code == 0, err_second
    assert "cached (" not in err_second and "training teacher" in err_second, err_second
    assert "2 trained, 0 cached" in err_second, err_second

    records = store.load_records(tmp_path / "store", kind=None)
    digests = {r["spec"]["data_sha256"] for r in records}
    assert len(records) == 6 and len(digests) == 2  # a teacher, student and kd per folder
    assert digests == {data_digest("imagefolder", str(f), Recipe()) for f in (first, second)}
    teachers = [r for r in records if r["kind"] == "teacher"]
    assert len({r["checkpoint"]["path"] for r in teachers}) == 2
    kd = [r for r in records if r["spec"]["method"] == "kd"]
    assert {r["spec"]["teacher_sha256"] for r in kd} == {r["checkpoint"]["sha256"] for r in teachers}

    # the board keeps the folders apart: each method has a row per folder, each kd row its own Δ
    code, board, err = run_cli(capsys, "report", "--out", out, "--format", "json")
    assert code == 0, err
    cells = [cell for cell in json.loads(board)["cells"] if cell["method"] in ("student", "kd")]
    assert len(cells) == 4, cells
    for digest in digests:
        student, kd = (
            next(c for c in cells if c["method"] == m and f"[data {digest[:6]}]" in c["row"])
            for m in ("student", "kd")
        )
        assert kd["delta"] == pytest.approx(kd["mean"] - student["mean"])
    # the same command again: everything is cached now, folder by folder
    code, _, err = run_cli(capsys, *RUN, "--data-root", str(second), "--out", out)
    assert code == 0 and "teacher resnet14 cached" in err and "0 trained, 2 cached" in err, err


def test_a_train_subset_larger_than_the_data_is_recorded_as_all_of_it(tmp_path, capsys):
    folder = image_folder(tmp_path / "a", seed=0)  # 16 training images
    out = tmp_path / "store"
    argv = [*RUN, "--methods", "student", "--data-root", str(folder), "--out", str(out)]
    code, _, err = run_cli(capsys, *argv, "--train-subset", "6000")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "--train-subset 6000" in line]
    assert len(warnings) == 1 and "16 training images" in warnings[0], err
    (record,) = store.load_records(out)
    assert record["spec"]["recipe"]["train_subset"] is None
    assert record["data"] == {"train": 16, "val": 0, "test": 4}
    # the same run as one without a subset: cached, not trained again
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "cached" in err, err


def test_a_subset_smaller_than_the_data_is_kept_and_recorded(tmp_path, capsys):
    folder = image_folder(tmp_path / "a", seed=0)
    argv = [*RUN, "--methods", "student", "--data-root", str(folder), "--out", str(tmp_path / "s")]
    code, _, err = run_cli(capsys, *argv, "--train-subset", "10", "--val-split", "0.2")
    assert code == 0 and "warning" not in err, err
    (record,) = store.load_records(tmp_path / "s")
    assert record["spec"]["recipe"]["train_subset"] == 10 and record["data"] == {
        "train": 8,
        "val": 2,
        "test": 4,
    }


def test_rerun_refuses_a_record_on_other_data(tmp_path, capsys):
    first, second = image_folder(tmp_path / "a", seed=0), image_folder(tmp_path / "b", seed=1)
    out = tmp_path / "store"
    argv = [*RUN, "--methods", "student", "--out", str(out)]
    code, _, err = run_cli(capsys, *argv, "--data-root", str(first))
    assert code == 0, err
    (record_file,) = (out / "runs").glob("*.json")
    before = record_file.read_bytes()
    code, _, err = run_cli(capsys, "rerun", str(record_file), "--data-root", str(second))
    assert_one_line_error(code, err, "imagefolder", str(second), "--data-root")
    assert record_file.read_bytes() == before
    code, _, err = run_cli(capsys, "rerun", str(record_file), "--data-root", str(first))
    assert code == 0, err


def test_folder_digest_follows_names_sizes_and_classes_not_the_location(tmp_path):
    folder = image_folder(tmp_path / "a", seed=0)
    digest = data_digest("imagefolder", str(folder), Recipe())
    assert digest == load_dataset("imagefolder", folder)[0].data_sha256
    assert digest == prepare_data("imagefolder", str(folder), Recipe(loader="stream")).info.data_sha256
    moved = folder.rename(tmp_path / "moved")
    assert data_digest("imagefolder", str(moved), Recipe()) == digest
    (moved / "train" / "ant" / "0.png").rename(moved / "train" / "bee" / "99.png")  # relabelled
    relabelled = data_digest("imagefolder", str(moved), Recipe())
    assert relabelled != digest
    with open(moved / "val" / "ant" / "0.png", "ab") as image:  # same name, another size
        image.write(b"\0")
    assert data_digest("imagefolder", str(moved), Recipe()) not in (digest, relabelled)


def test_array_digest_follows_the_decoded_data():
    def digest(**options):
        return load_dataset("synthetic", num_train=32, num_test=16, image_size=8, **options)[0].data_sha256

    assert digest() == digest() and len(digest()) == 64
    assert digest(seed=1) != digest() and digest(num_classes=4) != digest()


@pytest.mark.parametrize("subset", [None, 40])
def test_the_digest_is_of_the_source_data_whatever_the_subset(subset):
    recipe = Recipe(train_subset=subset, val_split=0.25)
    assert data_digest("synthetic", None, recipe) == data_digest("synthetic", None, Recipe())


def test_a_given_teachers_accuracy_is_measured_on_each_folders_own_data(tmp_path, capsys):
    import torch

    from kdbench.training import teachers
    from kdbench.training.evaluation import evaluate

    first, second = image_folder(tmp_path / "a", seed=0), image_folder(tmp_path / "b", seed=1, test=5)
    (second / "val" / "bee" / "4.png").unlink()  # 5 + 4 test images: an accuracy in 9ths, not 4ths
    out = tmp_path / "store"
    code, _, err = run_cli(capsys, *RUN, "--methods", "kd", "--data-root", str(first), "--out", str(out))
    assert code == 0, err
    (teacher_file,) = (out / "teachers").glob("*.pt")
    argv = [*RUN, "--methods", "kd", "--teacher", str(teacher_file), "--data-root", str(second)]
    code, _, err = run_cli(capsys, *argv, "--out", str(out))
    assert code == 0, err
    data = prepare_data("imagefolder", str(second), Recipe())
    model = teachers.load_teacher(teacher_file, "resnet14", data.info, torch.device("cpu"))
    expected = evaluate(model, data.test, data.info, torch.device("cpu"))["top1"]
    (on_second,) = [r for r in store.load_records(out) if r["spec"]["data_sha256"] == data.info.data_sha256]
    assert on_second["teacher"]["test_top1"] == expected and len(data.test) == 9
