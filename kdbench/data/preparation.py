"""From a dataset's name to the splits a run trains on: the loader's lookup (`load_dataset`), the data
choices a recipe records (`resolve_recipe`), the recipe's subset and validation split (`prepare_data`,
decoded once per process), and the data's identity (`data_digest`).

The loaders are the modules of kdbench/data/ registered in `kdbench.core.registries.DATASETS`
(kdbench/data/__init__.py imports them).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kdbench.core.errors import ConfigError
from kdbench.core.registries import DATASETS, lookup
from kdbench.core.spec import Recipe
from kdbench.data.batches import resize_note
from kdbench.data.identity import arrays_digest, folder_digest
from kdbench.data.image_folder import (
    IMAGE_FOLDERS,
    check_image_size,
    folder_image_size,
    list_image_folder,
    open_stream,
)
from kdbench.data.streaming import StreamData, available_memory, fits_in_memory
from kdbench.data.subsets import split_validation, stratified_subset
from kdbench.data.types import DATA_ROOT_ENV, DatasetInfo, ImageData


def list_datasets() -> list[str]:
    return sorted(DATASETS.module_dict)


def load_dataset(
    name: str, root: str | os.PathLike | None = None, **options
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """Load dataset `name` as (info, train, test); `options` are the loader's keyword arguments.

    root: where to look (default: the KDBENCH_DATA environment variable; Fashion-MNIST also
    falls back to Debian's package folder). Raises UnknownNameError for an unknown name,
    ValueError for an option the loader does not take.
    """
    loader = lookup(DATASETS, "dataset", name)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(unknown)}; options: {', '.join(accepted)}"
        )
    info, train, test = loader(None if root is None else Path(root).expanduser(), **options)
    if info.data_sha256 is None:  # image folders name their files; every other loader, its arrays
        info = replace(info, data_sha256=arrays_digest(train, test))
    return info, train, test


def data_digest(dataset: str, data_root: str | None, recipe: Recipe) -> str:
    """The identity of the data a run of `recipe` on `dataset` reads (`RunSpec.data_sha256`): an image
    folder's `folder_digest` (nothing decoded), else the `arrays_digest` of the decoded splits. The
    recipe's subset and validation split are not in it: they are in the spec's recipe."""
    if dataset in IMAGE_FOLDERS:
        return folder_digest(list_image_folder(dataset, None if data_root is None else Path(data_root)))
    return prepare_data(dataset, data_root, recipe).info.data_sha256


def resolve_recipe(
    dataset: str,
    data_root: str | None,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    copies: int = 1,
) -> Recipe:
    """`recipe` with the data choices made, so a spec records them: an image folder's image size
    (asked for, declared, else its first training image's) and the loader (`auto`: memory when
    `copies` decoded copies of train + test fit in kdbench/data/streaming.py's share of the available
    memory, else stream). Datasets of a fixed size take the in-memory loader only.
    """
    if dataset in IMAGE_FOLDERS:
        listing = list_image_folder(dataset, None if data_root is None else Path(data_root).expanduser())
        size = folder_image_size(dataset, listing, recipe.image_size)
        loader = recipe.loader
        decoded = (len(listing.train[1]) + len(listing.test[1])) * 3 * size * size * copies
        if loader == "auto":
            loader = "memory" if fits_in_memory(decoded, device) else "stream"
        elif loader == "memory" and decoded > available_memory():  # would be killed part-way through
            raise ConfigError(
                f"--loader memory: {dataset} decoded at {size}x{size} takes {decoded / 2**30:.1f} GiB, more "
                f"than the {available_memory() / 2**30:.1f} GiB available; use --loader stream or a smaller --image-size"
            )
        return replace(recipe, image_size=size, loader=loader)
    if recipe.image_size is not None:
        check_image_size(recipe.image_size)
    if recipe.loader == "stream":
        open_stream(dataset, None)  # raises: not an image folder
    return replace(recipe, loader="memory")


def _takes_image_size(dataset: str) -> bool:
    """Whether the dataset's loader makes its images at a size asked for (synthetic data)."""
    return "image_size" in inspect.signature(lookup(DATASETS, "dataset", dataset)).parameters


# The seed of a recipe's training and test subsets and validation split: fixed, not the run's, so every
# seed of a sweep trains and is tested on the same images (the engine records it in each run's `seeds`).
SUBSET_SEED = 0


@dataclass
class PreparedData:
    info: DatasetInfo
    train: ImageData | StreamData
    test: ImageData | StreamData
    val: ImageData | StreamData | None

    def to(self, device: torch.device | str) -> PreparedData:
        """Every split on `device` (uint8 images: a quarter of their float size)."""
        return PreparedData(
            self.info, self.train.to(device), self.test.to(device), self.val.to(device) if self.val else None
        )


def split_sizes(data: PreparedData) -> dict[str, int | str]:
    """The images a run trained, validated and tested on (a record's `data`): what its recipe's subset
    and split left of the data, whatever they asked for; and `resized`, how, where the run resized
    them (a recipe's image size on a dataset of a fixed size; kdbench/data/batches.py `resize_note`)."""
    sizes: dict[str, int | str] = {
        "train": len(data.train),
        "val": len(data.val) if data.val is not None else 0,
        "test": len(data.test),
    }
    note = resize_note(data.info)
    return sizes if note is None else {**sizes, "resized": note}


def prepare_data(dataset: str, data_root: str | None, recipe: Recipe) -> PreparedData:
    """Load a dataset once (decoded tensors in memory) and apply the recipe's subsets / val split.

    The subsets and the split use a fixed seed (`SUBSET_SEED`), so every run and seed of a sweep sees
    the same images; the run seed varies every other random source (docs/DESIGN.md, "Protocol").
    The dataset is decoded once per process (`_loaded`) for every subset and split of it (the sweep's
    validation, its in-process worker and `kdbench explain`'s sweeps alike).
    """
    # the environment's data folder is part of the key: the loader looks there when data_root is None
    return _prepared(
        dataset,
        data_root,
        recipe.train_subset,
        recipe.val_split,
        os.environ.get(DATA_ROOT_ENV),
        recipe.image_size,
        recipe.loader,
        recipe.test_subset,
    )


def fit_subsets(dataset: str, data_root: str | None, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """`recipe` without a train_subset or test_subset that asks for at least every image of its split,
    and a warning for each that asks for more: the run trains (is tested) on all of them, and its spec
    says so (a 6000-image subset of 16 images is the 16, the same run as one without a subset)."""
    if recipe.train_subset is None and recipe.test_subset is None:
        return recipe, []
    _, train, test = _loaded(
        dataset, data_root, os.environ.get(DATA_ROOT_ENV), recipe.image_size, recipe.loader
    )
    warnings = []
    for field, split, images, use in (
        ("train_subset", train, "training", "training"),
        ("test_subset", test, "test", "testing"),
    ):
        asked = getattr(recipe, field)
        if asked is None or asked < len(split):
            continue
        if asked > len(split):
            warnings.append(
                f"kdbench: warning: --{field.replace('_', '-')} {asked} exceeds the {len(split)} {images} images "
                f"of {dataset}; {use} on all {len(split)}"
            )
        recipe = replace(recipe, **{field: None})
    return recipe, warnings


@functools.lru_cache(maxsize=4)
def _prepared(
    dataset: str,
    data_root: str | None,
    train_subset: int | None,
    val_split: float,
    env_root: str | None,
    image_size: int | None = None,
    loader: str = "memory",
    test_subset: int | None = None,
) -> PreparedData:
    info, train, test = _loaded(dataset, data_root, env_root, image_size, loader)
    if train_subset and train_subset < len(train.labels):
        train = stratified_subset(train, train_subset, seed=SUBSET_SEED)
    if test_subset and test_subset < len(test.labels):
        test = stratified_subset(test, test_subset, seed=SUBSET_SEED)
    val = None
    if val_split:
        train, val = split_validation(train, val_split, seed=SUBSET_SEED)
    return PreparedData(info, train, test, val)


@functools.lru_cache(maxsize=2)
def _loaded(
    dataset: str, data_root: str | None, env_root: str | None, image_size: int | None, loader: str
) -> tuple[DatasetInfo, ImageData | StreamData, ImageData | StreamData]:
    """The whole dataset, decoded (or opened for streaming) once per process for every subset of it."""
    del env_root  # a cache key only
    if loader == "auto":  # `kdbench run` decides before making specs; a recipe left at auto decides here
        loader = resolve_recipe(dataset, data_root, Recipe(image_size=image_size, loader=loader)).loader
    if loader == "stream":
        return open_stream(dataset, data_root, image_size)
    if image_size is not None and not _takes_image_size(dataset):
        # a dataset of a fixed size, trained at another: stored as it is, each batch resized (`normalize`)
        info, train, test = load_dataset(dataset, data_root)
        size = (image_size, image_size)
        return replace(info, image_size=size, resized_from=info.image_size), train, test
    options = {} if image_size is None else {"image_size": image_size}
    return load_dataset(dataset, data_root, **options)
