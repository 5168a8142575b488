import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Training and refinement loops of small networks: one thread. On a shared, oversubscribed
    machine two OpenMP threads made these loops ~25x slower (spinning on a busy core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
