import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    # Tests share 2 cores; one intra-op thread keeps them predictable and reproducible.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
