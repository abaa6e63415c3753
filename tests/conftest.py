import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on a busy shared CPU a second OpenMP thread makes each op ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
