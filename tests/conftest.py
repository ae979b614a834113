import pytest
import torch

torch.set_num_threads(1)  # tiny test networks: threads only add overhead on a busy 2-core box


@pytest.fixture(scope="session")
def dc2_tables():
    """Random (not z-sorted) subsets of the DC2 training and validation files as dicts of arrays."""
    from rail.photovaez.data import read_dc2

    return read_dc2("training", 600, seed=1), read_dc2("validation", 400, seed=1)
