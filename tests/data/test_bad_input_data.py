"""The bad-input battery on data surfaces (issue 22, defects 10 and 13): image folders (one class, an
empty class, a file that is no image, nested folders, symlinks, a val class unknown to train), subset
and split sizes, image sizes, dataset names and roots, and pairs whose models cannot take the images.
Each case exits 2 with one line naming the folder, file or flag (or has the documented outcome), and
no finished record of the store changes."""

import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_bad_input import TINY, assert_one_line_error, run_cli

from kdbench.core import store

CLASSES = ("ant", "bee")


def image_folder(root, classes=CLASSES, train=4, test=2, side=16):
    """root/train/<class>/*.png and root/val/<class>/*.png of seeded noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", test)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


FOLDER_RUN = ["--dataset", "imagefolder", "--pairs", "resnet14:resnet8", "--methods", "student"]
FOLDER_RUN += ["--epochs", "1", "--vam", "off", "--jobs", "1", "--batch-size", "8", "--train-subset", "0"]


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """A store holding one finished run (the tiny synthetic student)."""
    out = tmp_path_factory.mktemp("finished") / "store"
    from kdbench.cli import main

    assert main(["run", *TINY, "--methods", "student", "--out", str(out)]) == 0
    return out


@pytest.fixture
def out(finished_store, tmp_path):
    """A copy of the finished store."""
    copy = tmp_path / "store"
    shutil.copytree(finished_store, copy)
    return copy


def records(out):
    return {path.name: path.read_bytes() for path in sorted((out / "runs").glob("*.json"))}


@pytest.fixture
def unchanged(finished_store):
    """unchanged(out): every finished record of the store is still there, byte for byte (new records may
    have been added: `refuse` checks there are none)."""
    before = records(finished_store)
    assert before

    def check(out):
        now = records(out)
        return all(now.get(name) == body for name, body in before.items())

    return check


def refuse(capsys, out, unchanged, argv, *fragments):
    """`kdbench run ARGV` exits 2 with one line holding each fragment, and writes no record."""
    count = len(records(out))
    code, _, err = run_cli(capsys, "run", *argv, "--out", str(out))
    assert_one_line_error(code, err, *fragments)
    assert unchanged(out) and len(records(out)) == count
    return err


def new_records(out, dataset="imagefolder"):
    return [r for r in store.load_records(out) if r["spec"]["dataset"] == dataset]


# -- image folders ---------------------------------------------------------------------------------------
def test_a_one_class_folder_is_refused_naming_it(capsys, tmp_path, out, unchanged):
    folder = image_folder(tmp_path / "data", classes=("ant",))
    refuse(
        capsys, out, unchanged, [*FOLDER_RUN, "--data-root", str(folder)], str(folder / "train"), "2 classes"
    )


def test_an_empty_class_folder_is_refused_naming_it(capsys, tmp_path, out, unchanged):
    folder = image_folder(tmp_path / "data")
    (folder / "train" / "cat").mkdir()
    (folder / "train" / "cat" / "notes.txt").write_text("no image here")
    argv = [*FOLDER_RUN, "--data-root", str(folder)]
    refuse(capsys, out, unchanged, argv, str(folder / "train" / "cat"), "holds no images")


def test_a_file_with_an_image_suffix_that_is_no_image_is_refused_naming_it(capsys, tmp_path, out, unchanged):
    folder = image_folder(tmp_path / "data")
    fake = folder / "train" / "bee" / "fake.jpg"
    fake.write_text("a text file with an image's name")
    refuse(capsys, out, unchanged, [*FOLDER_RUN, "--data-root", str(folder)], str(fake), "cannot be decoded")


def test_a_val_class_unknown_to_train_is_refused_naming_the_split(capsys, tmp_path, out, unchanged):
    folder = image_folder(tmp_path / "data")
    shutil.copytree(folder / "val" / "ant", folder / "val" / "cat")
    argv = [*FOLDER_RUN, "--data-root", str(folder)]
    refuse(capsys, out, unchanged, argv, str(folder / "val"), "cat", "not in train/")


def test_nested_folders_belong_to_their_top_class_folder(capsys, tmp_path, out, unchanged):
    """Documented outcome (Tiny-ImageNet keeps train/<class>/images/): images in subfolders of a class
    folder are that class's, and are trained."""
    folder = image_folder(tmp_path / "data")
    nested = folder / "train" / "ant" / "images" / "more"
    nested.mkdir(parents=True)
    shutil.copy(folder / "train" / "bee" / "0.png", nested / "extra.png")
    code, _, err = run_cli(capsys, "run", *FOLDER_RUN, "--data-root", str(folder), "--out", str(out))
    assert code == 0, err
    (new,) = new_records(out)
    assert new["data"]["train"] == 9 and unchanged(out)


def test_a_folder_with_a_channel_of_one_value_trains(capsys, tmp_path, out, unchanged):
    """Documented outcome: a channel that holds one value everywhere (red-only images) is not scaled; its
    std of 0 divided every input into NaN, and the run failed on a 'non-finite loss' naming nothing."""
    folder = image_folder(tmp_path / "data")
    for path in folder.glob("*/*/*.png"):
        pixels = np.asarray(Image.open(path)).copy()
        pixels[..., 1:] = 7
        Image.fromarray(pixels).save(path)
    code, _, err = run_cli(capsys, "run", *FOLDER_RUN, "--data-root", str(folder), "--out", str(out))
    assert code == 0, err
    (new,) = new_records(out)
    assert new["status"] == "done" and math.isfinite(new["history"][0]["train_loss"]) and unchanged(out)


def test_a_symlink_out_of_the_folder_is_followed_to_an_image_and_refused_to_anything_else(
    capsys, tmp_path, out, unchanged
):
    """Documented outcome: a file symlink is read where it points (datasets are often linked from
    another disk); what it points to must decode as an image, else it is refused naming the link."""
    folder = image_folder(tmp_path / "data")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(folder / "train" / "ant" / "0.png", outside)
    os.symlink(outside, folder / "train" / "ant" / "linked.png")
    code, _, err = run_cli(capsys, "run", *FOLDER_RUN, "--data-root", str(folder), "--out", str(out))
    assert code == 0, err
    (new,) = new_records(out)
    assert new["data"]["train"] == 9 and unchanged(out)
    other = image_folder(tmp_path / "other")  # a fresh folder: a process keeps a folder it decoded
    link = other / "train" / "bee" / "secret.png"
    os.symlink("/etc/hostname", link)
    refuse(capsys, out, unchanged, [*FOLDER_RUN, "--data-root", str(other)], str(link), "cannot be decoded")


def test_a_data_root_that_is_a_file_is_refused_naming_it(capsys, tmp_path, out, unchanged):
    afile = tmp_path / "data.tar"
    afile.write_bytes(b"\0" * 64)
    for dataset in ("imagefolder", "fashion-mnist", "cifar10"):
        argv = [*FOLDER_RUN, "--dataset", dataset, "--data-root", str(afile)]
        refuse(capsys, out, unchanged, argv, str(afile), "is a file, not a folder")


def test_a_dataset_name_typo_is_refused_with_the_close_name(capsys, out, unchanged):
    refuse(capsys, out, unchanged, [*TINY, "--dataset", "fashion-mnst"], "fashion-mnst", "fashion-mnist")


# -- sizes: subset, split, image side --------------------------------------------------------------------
def test_a_train_subset_over_the_data_warns_once_and_trains_all_of_it(capsys, tmp_path, out, unchanged):
    """Documented outcome: not an error (the quick preset's 6000 on a small folder is common), but the
    spec says what was trained (no subset) and stderr says why, in one line."""
    folder = image_folder(tmp_path / "data")
    argv = [*FOLDER_RUN, "--data-root", str(folder), "--train-subset", "1000000", "--out", str(out)]
    code, _, err = run_cli(capsys, "run", *argv)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "--train-subset 1000000" in line]
    assert len(warnings) == 1 and "8 training images" in warnings[0], err
    (new,) = new_records(out)
    assert new["spec"]["recipe"]["train_subset"] is None and new["data"]["train"] == 8 and unchanged(out)


def test_a_val_split_that_empties_a_class_is_refused_naming_the_flag(capsys, tmp_path, out, unchanged):
    folder = image_folder(tmp_path / "data", train=1)  # one training image per class
    argv = [*FOLDER_RUN, "--data-root", str(folder), "--val-split", "0.5"]
    refuse(capsys, out, unchanged, argv, "--val-split 0.5", "without training images")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("0", "argument --image-size"), ("abc", "argument --image-size"), ("100000", "--image-size 100000")],
)
def test_a_nonsense_image_size_is_refused_naming_the_flag(capsys, tmp_path, out, unchanged, value, fragment):
    folder = image_folder(tmp_path / "data")
    refuse(capsys, out, unchanged, [*FOLDER_RUN, "--data-root", str(folder), "--image-size", value], fragment)


def test_an_image_size_over_the_limit_is_refused_for_synthetic_data_too(capsys, out, unchanged):
    refuse(capsys, out, unchanged, [*TINY, "--image-size", "5000"], "--image-size 5000", "4096")


# -- pairs whose models cannot take the images (defect 13) -----------------------------------------------
def test_a_pair_whose_model_cannot_take_the_images_is_refused_before_training(capsys, out, unchanged):
    """timm's CrossViT needs two token grids of its own sizes, which 32x32 images cannot give: one line
    naming the pair and the model, not a traceback from the first training step."""
    argv = [*TINY, "--pairs", "resnet14:resnet8,resnet14:timm:crossvit_tiny_240", "--methods", "student,kd"]
    err = refuse(capsys, out, unchanged, argv, "resnet14:timm:crossvit_tiny_240", "3x32x32", "synthetic")
    assert "training" not in err  # refused before any run (the teacher included) started


def test_a_vision_transformer_is_built_for_the_datasets_image_size_and_trains(capsys, out, unchanged):
    """Documented outcome: a timm model of a fixed input size (ViT) is built for the data's images
    (img_size 32: 2x2 patches of 16), so the pair of the issue trains, teacher and student alike."""
    argv = [*TINY, "--pairs", "timm:vit_tiny_patch16_224:resnet8,resnet14:timm:vit_tiny_patch16_224"]
    code, _, err = run_cli(capsys, "run", *argv, "--methods", "student,kd", "--out", str(out))
    assert code == 0 and "0 failed" in err, err
    vit = "timm:vit_tiny_patch16_224"
    new = [
        r for r in store.load_records(out, kind=None) if vit in (r["spec"]["student"], r["spec"]["teacher"])
    ]
    # the ViT teacher, the ViT student and the kd runs of both pairs
    assert len(new) == 4 and all(r["status"] == "done" for r in new) and unchanged(out)
