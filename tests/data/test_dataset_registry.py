"""The dataset registry (kdbench/data/preparation.py `load_dataset`): every loader is listed by name,
and an unknown name or option is refused naming it."""

from __future__ import annotations

import pytest

from kdbench.core.registries import UnknownNameError
from kdbench.data import list_datasets, load_dataset


def test_registry_names_and_errors():
    assert set(list_datasets()) >= {
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
        "digits",
        "synthetic",
    }
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match="no option colour; options: num_train"):
        load_dataset("synthetic", colour=True)
