"""The identity of the data a run reads (`RunSpec.data_sha256`): digests of decoded splits and of image
folders, and the check that refuses data whose digest differs from a spec's.

`data_digest`, which picks the digest for a dataset, is in kdbench/data/preparation.py (it may decode the data).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from kdbench.data.types import DATA_ROOT_ENV, DataMismatchError, DatasetInfo, FolderListing, ImageData


def arrays_digest(*splits: ImageData) -> str:
    """SHA-256 of decoded splits: each one's image and label shapes and bytes, in order."""
    digest = hashlib.sha256()
    for split in splits:
        for tensor in (split.images, split.labels):
            digest.update(repr(tuple(tensor.shape)).encode())
            digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# files of an image folder whose bytes go into its digest (evenly spaced over each split): names and
# sizes alone do not tell apart two folders of same-sized files (uncompressed or noise images)
DIGEST_SAMPLE = 32


def folder_digest(listing: FolderListing) -> str:
    """SHA-256 of an image folder: per split, each file's path below the dataset folder, its size and its
    class, and the bytes of DIGEST_SAMPLE of its files. Cheap on a million files (one stat each, a few
    reads, nothing decoded); an edit that keeps a file's size, outside the sample, is not noticed."""
    digest = hashlib.sha256()
    prefix = len(str(listing.base)) + 1
    for split, (paths, labels) in (("train", listing.train), ("test", listing.test)):
        for path, label in zip(paths, labels.tolist(), strict=True):
            line = f"{split}\t{path[prefix:]}\t{os.stat(path).st_size}\t{listing.classes[label]}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
        for index in np.unique(np.linspace(0, len(paths) - 1, min(DIGEST_SAMPLE, len(paths))).round()):
            digest.update(Path(paths[int(index)]).read_bytes())
    return digest.hexdigest()


def check_data(expected: str | None, info: DatasetInfo, data_root: str | None) -> None:
    """Refuse data whose identity differs from the one a spec or record names (None: not recorded)."""
    if expected is not None and expected != info.data_sha256:
        where = f"under {data_root}" if data_root else f"in the default location (${DATA_ROOT_ENV})"
        raise DataMismatchError(
            f"the {info.name} data found {where} has SHA-256 {str(info.data_sha256)[:12]}, not the run's "
            f"{expected[:12]}: pass --data-root pointing at the data the run was trained on"
        )
