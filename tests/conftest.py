import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The engine's test models are tiny: one thread avoids oversubscribing CI's two cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
