"""Amortised photo-z PDFs (SPEC Estimation 1, draft Eq. 20-22)::

    q(z | x) ~ (1/N) sum_k q(z | b_k, x),   b_k ~ q(b | x)

a mixture of N log-normals, given on the redshift grid as exact cell averages (differences of the
log-normal CDF at the cell edges divided by the cell width).  The standard-normal draws
``eps_k`` of ``b_k = mu(x) + sigma(x) eps_k`` are fixed by the seed and shared by all galaxies, so
a galaxy's PDF does not depend on the chunk or process it is estimated in (up to float32
rounding, which can differ by one unit in the last place between batch sizes).
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import cell_edges
from .model import SDGM

__all__ = ["fixed_normal_draws", "q_z_given_x_on_grid"]


def fixed_normal_draws(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) standard-normal draws fixed by ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, dim), generator=g)


@torch.no_grad()
def q_z_given_x_on_grid(
    model: SDGM,
    x: np.ndarray,
    zgrid: np.ndarray,
    n_b: int = 16,
    seed: int = 0,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Densities of the amortised q(z|x) at the grid points, (N, len(zgrid)).

    Parameters
    ----------
    model
        A trained SDGM.
    x
        Standardised features (N, D_x).
    zgrid
        Redshift grid (RAIL's ``linspace(zmin, zmax, nzbins)``).
    n_b
        Number N of b samples in the mixture.
    seed
        Fixes the b draws.
    """
    device = torch.device(device)
    model = model.to(device)
    eps = fixed_normal_draws(n_b, model.config.dim_b, seed).to(device)
    log_edges = torch.log(torch.as_tensor(cell_edges(zgrid), dtype=torch.float64, device=device))
    widths = torch.as_tensor(np.diff(cell_edges(zgrid)), dtype=torch.float64, device=device)
    out = np.empty((x.shape[0], len(zgrid)))
    for s in range(0, x.shape[0], batch_size):
        xb = torch.as_tensor(x[s : s + batch_size], dtype=torch.float32, device=device)
        mu_b, logvar_b = model.q_b_given_x_net(xb)
        b = mu_b[None] + torch.exp(0.5 * logvar_b)[None] * eps[:, None, :]  # (n_b, n, B)
        q_z = model.q_z_given_bx(b, xb.expand(n_b, -1, -1))
        loc = q_z.loc.to(torch.float64)[..., None]
        scale = q_z.scale.to(torch.float64)[..., None]
        cdf = torch.special.ndtr((log_edges - loc) / scale)  # (n_b, n, nz + 1)
        mass = (cdf[..., 1:] - cdf[..., :-1]).mean(0)
        out[s : s + batch_size] = (mass / widths).cpu().numpy()
    return out
