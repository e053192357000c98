import sys
from pathlib import Path

import pytest
import torch

# tests/ mirrors kdbench/'s folders, without __init__.py: every test file's name is unique
# (tests/test_layers.py checks it) and pytest puts a test module's folder on sys.path when it collects
# it. A module that imports a helper from a test module of another folder by name (test_seeds.py:
# `from test_streaming import image_folder`) needs that folder there even when run alone.
for _folder in sorted(
    path for path in Path(__file__).parent.iterdir() if path.is_dir() and path.name != "__pycache__"
):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

# the headless Chromium fixtures of the HTML tests, registered here rather than in a
# tests/reporting/conftest.py, which would shadow this module where tests import its helpers as `conftest`
from browser_pages import browser, open_page  # noqa: E402, F401

# `pytest -n auto --dist loadfile` (.ci/run) hands each worker a whole file from a queue, by default sorted
# by tests per file: the files of a few long trainings would come last, where one of them can keep one core
# busy while the other has nothing left. These go first, the longest first (by a full run's --durations),
# the others after them in collection order.
FILES_THAT_TRAIN_LONGEST = (
    "tests/execution/test_backends_cluster.py",
    "tests/training/test_cohort.py",
    "tests/cli/test_cli.py",
    "tests/devtools/test_bench.py",
    "tests/training/test_distributed.py",
    "tests/execution/test_sweep.py",
    "tests/core/test_trackers.py",
    "tests/explain/test_explainer.py",
    "tests/training/test_cost_probe.py",
    "tests/reporting/test_plots.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's; absent under -p no:xdist
        config.option.loadscopereorder = False  # the queue keeps the collection's order below


def pytest_collection_modifyitems(items):
    rank = {path: index for index, path in enumerate(FILES_THAT_TRAIN_LONGEST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    # Tests share 2 cores; one intra-op thread keeps them predictable and reproducible.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def tiny_data():
    """128 synthetic 16x16 training images, 64 test images: a few steps per epoch."""
    from kdbench.data import PreparedData, load_dataset

    info, train, test = load_dataset("synthetic", num_train=128, num_test=64, image_size=16)
    return PreparedData(info, train, test, None)


def fresh_teacher(info):
    """The tests' teacher: a fresh resnet14 for `info`'s images, initialised at seed 1 (untrained)."""
    from kdbench.models import build_model

    torch.manual_seed(1)
    return build_model("resnet14", num_classes=info.num_classes, in_chans=info.in_chans)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_data):
    """`fresh_teacher` for `tiny_data`, shared by a module's tests."""
    return fresh_teacher(tiny_data.info)


def make_trainer(data, out, method, device="cpu", teacher=None, **fields):
    """A Trainer of resnet8 (from a fresh resnet14 teacher, seed 1, when the method needs one):
    1 epoch at batch 32 unless `fields` says otherwise (RunSpec fields; `recipe` replaces it). The cost
    probe is off: its steps would outnumber these runs' own, and its tests
    (tests/training/test_cost_probe.py) call it themselves."""
    from kdbench.core.spec import Recipe, RunSpec
    from kdbench.methods.base import method_class
    from kdbench.training.engine import Trainer

    cls = method_class(method)
    if cls.needs_teacher and teacher is None:
        teacher = fresh_teacher(data.info)
    fields.setdefault("recipe", Recipe(epochs=1, batch_size=32, lr_decay_epochs=()))
    spec = RunSpec(
        method=method,
        student="resnet8",
        teacher="resnet14" if cls.needs_teacher else None,
        dataset="synthetic",
        hp=cls.resolve_hp(),
        **fields,
    )
    teacher = teacher.to(device) if cls.needs_teacher else None
    return Trainer(
        spec,
        data,
        teacher=teacher,
        device=torch.device(device),
        out=out,
        progress=lambda _: None,
        time_probe=False,
    )
