"""Datasets held in memory as uint8 tensors, and a batch iterator that augments on the device.

Every loader decodes its files once into an `ImageData` (uint8 images, int64 labels) and
describes the dataset in a `DatasetInfo` (shape, classes, normalisation, augmentation).
`iterate_batches` then slices batches out of memory, moves them to the device as uint8 and
applies the random crop / flip and the normalisation there.

One module per dataset, each registering its loaders in `kdbench.core.registries.DATASETS`
(called as `fn(root, **options)`); importing this package imports them all:
    fashion_mnist.py   fashion-mnist   IDX files (Xiao et al. 2017): Debian's dataset-fashion-mnist package,
                                       torchvision's FashionMNIST/raw/ folder, or the files in any folder
    cifar.py           cifar10         torchvision's pickles under root/cifar-10-batches-py (Krizhevsky 2009)
                       cifar100        torchvision's pickles under root/cifar-100-python, fine labels
    image_folder.py    imagefolder     root/train/<class>/... and root/val (or root/test); Tiny-ImageNet's val layout too
                       tiny-imagenet   the same layout (root or root/tiny-imagenet-200), 64x64, declared normalisation
                       imagenet        the same layout (root or root/imagenet), 224x224, ImageNet's normalisation
    digits.py          digits          scikit-learn's bundled 8x8 digits (UCI optdigits test set), stratified split
    synthetic.py       synthetic       seeded class patterns plus noise, for tests and smoke runs

Shared modules:
    types.py         ImageData, DatasetInfo, the dataset errors, where a loader looks ($KDBENCH_DATA)
    batches.py       the device-side crop / flip, normalisation, `iterate_batches`
    subsets.py       stratified subsets, validation splits, per-channel statistics
    identity.py      digests of the data (`RunSpec.data_sha256`) and the check against a spec's
    preparation.py   `load_dataset`, `resolve_recipe`, `prepare_data` (the recipe's subset and split), `data_digest`
    views.py         extra augmented views of a batch (RandAugment, a method's `extra_views`)
    streaming.py     image folders read from disk batch by batch (`StreamData`)

Nothing here downloads anything: a missing dataset raises DatasetNotFoundError saying where
it was looked for and how to get it.

The image-folder datasets can also be streamed from disk (`Recipe.loader`: memory | stream |
auto; kdbench/data/streaming.py): `prepare_data` then hands the engine `StreamData` splits, which
`iterate_batches` reads like `ImageData`.
"""

from kdbench.data import streaming
from kdbench.data.batches import MEMORY_FORMAT, augment_batch, iterate_batches, normalize
from kdbench.data.cifar import load_cifar10, load_cifar100
from kdbench.data.digits import load_digits
from kdbench.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    IDX_UBYTE,
    load_fashion_mnist,
    read_idx,
)
from kdbench.data.identity import DIGEST_SAMPLE, arrays_digest, check_data, folder_digest
from kdbench.data.image_folder import (
    IMAGE_FOLDERS,
    IMAGE_SUFFIXES,
    MAX_IMAGE_SIZE,
    STATS_SAMPLE,
    ImageFolderKind,
    list_image_folder,
    load_imagefolder,
    load_imagenet,
    load_tiny_imagenet,
    open_stream,
)
from kdbench.data.preparation import (
    SUBSET_SEED,
    PreparedData,
    data_digest,
    fit_subsets,
    list_datasets,
    load_dataset,
    prepare_data,
    resolve_recipe,
    split_sizes,
)
from kdbench.data.streaming import DatasetCorruptError, StreamData
from kdbench.data.subsets import channel_stats, split_validation, stratified_order, stratified_subset
from kdbench.data.synthetic import load_synthetic
from kdbench.data.types import (
    DATA_ROOT_ENV,
    DataMismatchError,
    DatasetInfo,
    DatasetNotFoundError,
    FolderListing,
    ImageData,
)
from kdbench.data.views import VIEWS, augment_views, rand_augment, view_generator

__all__ = [
    "DATA_ROOT_ENV",
    "DEBIAN_FASHION_MNIST",
    "DIGEST_SAMPLE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "IDX_UBYTE",
    "IMAGE_FOLDERS",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_SIZE",
    "MEMORY_FORMAT",
    "STATS_SAMPLE",
    "SUBSET_SEED",
    "VIEWS",
    "DataMismatchError",
    "DatasetCorruptError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FolderListing",
    "ImageData",
    "ImageFolderKind",
    "PreparedData",
    "StreamData",
    "arrays_digest",
    "augment_batch",
    "augment_views",
    "channel_stats",
    "check_data",
    "data_digest",
    "fit_subsets",
    "folder_digest",
    "iterate_batches",
    "list_datasets",
    "list_image_folder",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_imagenet",
    "load_synthetic",
    "load_tiny_imagenet",
    "normalize",
    "open_stream",
    "prepare_data",
    "rand_augment",
    "read_idx",
    "resolve_recipe",
    "split_sizes",
    "split_validation",
    "stratified_order",
    "stratified_subset",
    "streaming",
    "view_generator",
]
