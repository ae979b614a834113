import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny test networks: threads only add overhead on a busy 2-core box


@pytest.fixture(scope="session")
def dc2_tables():
    """Random (not z-sorted) subsets of the DC2 training and validation files as dicts of arrays."""
    from rail.photovaez.data import read_dc2

    return read_dc2("training", 600, seed=1), read_dc2("validation", 400, seed=1)


def gaussian_photoz(n: int, seed: int, z_range: tuple[float, float], width: float):
    """Calibrated Gaussian photo-z: means ``mu`` ~ U(z_range), widths ``width (1 + mu)`` and true
    redshifts drawn from them; returns (mu, sigma, ztrue, the generator for further draws)."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(*z_range, n)
    sigma = width * (1 + mu)
    return mu, sigma, rng.normal(mu, sigma), rng
