"""The streaming loader (kdbench/data/streaming.py) on small generated image folders: the in-memory
loader's batches when nothing is augmented, seeded batches whatever the worker count, the folder's
own resolution, a `kdbench run` that streams, Tiny-ImageNet's layout, and one-line errors."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.cli import main
from kdbench.core.errors import ConfigError
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import (
    IMAGE_FOLDERS,
    ImageData,
    iterate_batches,
    load_dataset,
    open_stream,
    prepare_data,
    resolve_recipe,
    streaming,
)
from kdbench.data.streaming import DatasetCorruptError, StreamData

CLASSES = ("ant", "bee", "cat")


def image_folder(root, side=48, train=12, test=4, odd=False):
    """root/train/<class>/*.png and root/val/<class>/*.png of seeded noise (PNG: lossless); with `odd`,
    every third training image is (side + 12) x side, so the loaders must crop it square."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", test)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width = side + 12 if odd and split == "train" and i % 3 == 0 else side
                pixels = rng.integers(0, 256, (side, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def drain(data, info, seed, *, shuffle=True, augment=True, batch_size=10):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return list(
        iterate_batches(
            data, info, batch_size, shuffle=shuffle, augment=augment, device="cpu", generator=generator
        )
    )


def same_batches(first, second) -> bool:
    return len(first) == len(second) and all(
        all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) for a, b in zip(first, second, strict=True)
    )


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "data", odd=True)


# (a) streamed = in memory, when neither augments ------------------------------------------------
def test_stream_gives_the_in_memory_batches_when_nothing_is_augmented(folder):
    memory = prepare_data("imagefolder", str(folder), Recipe(loader="memory"))
    stream = prepare_data("imagefolder", str(folder), Recipe(loader="stream"))
    assert isinstance(memory.train, ImageData) and isinstance(stream.train, StreamData)
    # the same info (normalisation measured on the same images) but the memory loader's pad-crop
    assert replace(stream.info, crop_padding=memory.info.crop_padding) == memory.info
    assert memory.info.image_size == stream.info.image_size == (48, 48)
    # the seeded order and the decoded, normalised images: training split shuffled, test split in order
    for seed in (0, 7):
        assert same_batches(
            drain(memory.train, memory.info, seed, augment=False),
            drain(stream.train, stream.info, seed, augment=False),
        )
    assert same_batches(
        drain(memory.test, memory.info, None, shuffle=False, augment=False),
        drain(stream.test, stream.info, None, shuffle=False, augment=False),
    )
    assert torch.equal(memory.train.labels, stream.train.labels)


# (b) seeded, whatever the worker count ----------------------------------------------------------
def test_same_seed_same_batches_across_loaders_and_worker_counts(folder, monkeypatch):
    info, train, _ = open_stream("imagefolder", folder)
    monkeypatch.setenv(streaming.WORKERS_ENV, "0")
    alone = drain(train, info, seed=3)
    again = drain(open_stream("imagefolder", folder)[1], info, seed=3)  # a second loader
    monkeypatch.setenv(streaming.WORKERS_ENV, "2")
    pooled = drain(train, info, seed=3)
    assert same_batches(alone, again) and same_batches(alone, pooled)
    other = drain(train, info, seed=4)
    assert not torch.equal(alone[0][0], other[0][0])
    # augmentation happened: the same samples unaugmented differ from the augmented ones
    plain = drain(train, info, seed=3, augment=False)
    assert torch.equal(alone[0][2], plain[0][2]) and not torch.equal(alone[0][0], plain[0][0])
    # and the run's generator ends the epoch in the same state either way (checkpoints resume it)
    first, second = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    list(iterate_batches(train, info, 10, shuffle=True, augment=True, device="cpu", generator=first))
    monkeypatch.setenv(streaming.WORKERS_ENV, "0")
    list(iterate_batches(train, info, 10, shuffle=True, augment=True, device="cpu", generator=second))
    assert torch.equal(first.get_state(), second.get_state())


def test_random_resized_crop_is_torchvisions_geometry():
    """Every crop lies inside the image, covers 8-100 % of it (or is the central fallback), and a
    flip mirrors it: checked on an image whose pixels encode their coordinates."""
    ys, xs = np.meshgrid(np.arange(40), np.arange(60), indexing="ij")
    image = Image.fromarray(np.stack([xs * 4, ys * 6, np.zeros_like(xs)], axis=-1).astype(np.uint8))
    for seed in range(20):
        out = streaming.random_resized_crop(image, 16, torch.Generator().manual_seed(seed))
        assert out.shape == (16, 16, 3)
        columns = out[8, :, 0].astype(int)
        assert abs(columns[0] - columns[-1]) >= 4  # monotone in x one way or the other (flip)


# (c) the folder's own resolution --------------------------------------------------------------------
def test_a_folder_trains_at_its_own_resolution_unless_told(tmp_path):
    root = image_folder(tmp_path / "d48", side=48, train=3, test=1)
    assert resolve_recipe("imagefolder", str(root), Recipe()).image_size == 48
    assert load_dataset("imagefolder", root)[0].image_size == (48, 48)
    assert prepare_data("imagefolder", str(root), Recipe(loader="stream")).info.image_size == (48, 48)
    assert resolve_recipe("imagefolder", str(root), Recipe(image_size=32)).image_size == 32
    told = prepare_data("imagefolder", str(root), Recipe(image_size=32, loader="stream"))
    assert told.info.image_size == (32, 32)
    assert drain(told.train, told.info, 0)[0][0].shape[-2:] == (32, 32)
    # declared sizes of known datasets
    assert IMAGE_FOLDERS["tiny-imagenet"].image_size == 64 and IMAGE_FOLDERS["imagenet"].image_size == 224


def test_auto_streams_what_would_not_fit_and_the_hash_keeps_old_ids(folder, monkeypatch):
    assert resolve_recipe("imagefolder", str(folder), Recipe(loader="auto")).loader == "memory"
    monkeypatch.setattr(streaming, "MEMORY_FRACTION", 1e-12)
    assert resolve_recipe("imagefolder", str(folder), Recipe(loader="auto")).loader == "stream"
    assert resolve_recipe("synthetic", None, Recipe(loader="auto")).loader == "memory"

    # the new recipe fields are left out of the run id at their defaults, so old ids stay valid
    def spec(**recipe):
        recipe = Recipe(epochs=3, train_subset=6000, **recipe)
        return RunSpec(
            method="kd", student="resnet8", dataset="fashion-mnist", teacher="resnet20", recipe=recipe
        )

    assert spec().run_id == "6d381513fa35"  # what it was before the fields existed
    assert len({spec().run_id, spec(loader="stream").run_id, spec(image_size=48).run_id}) == 3


# (d) kdbench run, streamed ----------------------------------------------------------------------
def test_kdbench_run_streams_a_folder_and_writes_its_record(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(streaming.WORKERS_ENV, "0")  # restored after the test (--workers sets it)
    out = tmp_path / "store"
    argv = ["run", "--dataset", "imagefolder", "--data-root", str(folder), "--pairs", "resnet14:resnet8"]
    argv += ["--methods", "student", "--epochs", "1", "--batch-size", "16", "--vam", "off", "--jobs", "1"]
    argv += ["--loader", "stream", "--workers", "1", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    (record_file,) = (out / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "done" and len(record["history"]) == 1
    assert record["spec"]["recipe"]["loader"] == "stream" and record["spec"]["recipe"]["image_size"] == 48
    assert record["history"][0]["images"] == 36 and 0 <= record["metrics"]["last_top1"] <= 100


# (e) Tiny-ImageNet's layout ---------------------------------------------------------------------
def tiny_imagenet(root):
    """tiny-imagenet-200/ as unpacked: train/<wnid>/images/*.JPEG, val/images/ + val_annotations.txt."""
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(1)
    rows = []
    for c, wnid in enumerate(("n01443537", "n01629819")):
        (base / "train" / wnid / "images").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            rows.append(f"val_{c * 2 + i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "images").mkdir(parents=True)
    for row in rows:
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "val" / "images" / row.split("\t")[0], "JPEG")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    (base / "test" / "images").mkdir(parents=True)  # unlabelled: val/ is the test split
    return root


def test_tiny_imagenet_layout_loads_in_memory_and_streamed(tmp_path):
    root = tiny_imagenet(tmp_path)
    memory = prepare_data("tiny-imagenet", str(root), Recipe(loader="memory"))
    stream = prepare_data("tiny-imagenet", str(root), Recipe(loader="stream"))
    for data in (memory, stream):
        assert data.info.classes == ("n01443537", "n01629819") and data.info.image_size == (64, 64)
        assert data.info.mean == IMAGE_FOLDERS["tiny-imagenet"].mean
        assert data.train.labels.tolist() == [0] * 4 + [1] * 4 and data.test.labels.tolist() == [0, 0, 1, 1]
    assert same_batches(
        drain(memory.test, memory.info, None, shuffle=False, augment=False),
        drain(stream.test, stream.info, None, shuffle=False, augment=False),
    )


# (f) bad input: one line, exit 2 ----------------------------------------------------------------
def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse refuses a flag before main's body runs
        code = exit_.code
    return code, capsys.readouterr().err


TINY = ["--pairs", "resnet14:resnet8", "--methods", "student", "--epochs", "1", "--vam", "off", "--jobs", "1"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dataset", "imagefolder", "--image-size", "0"], "argument --image-size"),
        (["--dataset", "imagefolder", "--workers", "-1"], "argument --workers"),
        (["--dataset", "imagefolder", "--loader", "disk"], "argument --loader"),
        (["--dataset", "imagefolder", "--data-root", "{missing}"], "no train/ and val/"),
        (["--dataset", "imagefolder", "--data-root", "{empty}"], "no class folders"),
        (["--dataset", "imagefolder", "--data-root", "{no_images}"], "no images in"),
        (["--dataset", "synthetic", "--loader", "stream"], "streaming loader reads image folders"),
        (["--dataset", "synthetic", "--image-size", "16", "--loader", "stream"], "image folders"),
        (["--dataset", "imagefolder", "--data-root", "{corrupt}", "--loader", "stream"], "cannot be decoded"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, fragment):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    (tmp_path / "no_images" / "train" / "a").mkdir(parents=True)
    (tmp_path / "no_images" / "train" / "b").mkdir()
    (tmp_path / "no_images" / "val" / "a").mkdir(parents=True)
    corrupt = image_folder(tmp_path / "corrupt", train=2, test=1)
    (corrupt / "train" / "ant" / "0.png").write_bytes(b"not a png")
    paths = {name: str(tmp_path / name) for name in ("missing", "empty", "no_images", "corrupt")}
    argv = [item.format(**paths) for item in extra]
    code, err = run_cli(capsys, "run", *TINY, *argv, "--out", str(tmp_path / "store"))
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("kdbench: error:"), err
    assert "Traceback" not in err and fragment in lines[-1], lines[-1]
    assert not (tmp_path / "store" / "runs").exists()


def test_a_corrupt_image_found_mid_epoch_is_a_dataset_error(folder, monkeypatch):
    info, train, _ = open_stream("imagefolder", folder)
    (folder / "train" / "bee" / "5.png").write_bytes(b"truncated")
    for workers in ("0", "2"):
        monkeypatch.setenv(streaming.WORKERS_ENV, workers)
        with pytest.raises(DatasetCorruptError, match=r"bee/5\.png cannot be decoded") as caught:
            drain(train, info, 0)
        assert "\n" not in str(caught.value)  # one line, not a worker's traceback


def test_methods_needing_decoded_images_say_so():
    data = StreamData(["a.png"], torch.zeros(1, dtype=torch.int64), 8)
    with pytest.raises(ConfigError, match="--loader memory"):
        data.images  # noqa: B018
    with pytest.raises(ConfigError, match="must be one of memory, stream, auto"):
        Recipe(loader="disk")
    with pytest.raises(ConfigError, match="image-size"):
        Recipe(image_size=0)
