import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny test networks: threads only add overhead on a busy 2-core box


@pytest.fixture(scope="session")
def dc2_paths():
    from rail.utils.path_utils import find_rail_file

    return (
        find_rail_file("examples_data/testdata/test_dc2_training_9816.hdf5"),
        find_rail_file("examples_data/testdata/test_dc2_validation_9816.hdf5"),
    )


@pytest.fixture(scope="session")
def dc2_tables(dc2_paths):
    """Random (not z-sorted) subsets of the DC2 training and validation files as dicts of arrays."""
    import tables_io

    out = []
    for path, n in zip(dc2_paths, (600, 400)):
        t = tables_io.read(path)["photometry"]
        idx = np.sort(np.random.default_rng(1).choice(len(t["redshift"]), n, replace=False))
        out.append({k: np.asarray(v)[idx] for k, v in t.items()})
    return tuple(out)
