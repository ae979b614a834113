"""Amortised photo-z PDFs (SPEC Estimation 1, draft Eq. 20-22)::

    q(z | x) ~ (1/N) sum_k q(z | b_k, x),   b_k ~ q(b | x)

a mixture of N log-normals, given on the redshift grid as exact cell averages
(:func:`photovaez.mixture.lognormal_mixture_on_grid`).  The standard-normal draws ``eps_k`` of
``b_k = mu(x) + sigma(x) eps_k`` are fixed by the seed and shared by all galaxies, so a galaxy's
PDF does not depend on the chunk or process it is estimated in (up to float32 rounding).
"""

from __future__ import annotations

import numpy as np
import torch

from .mixture import lognormal_mixture_on_grid
from .model import SDGM

__all__ = ["fixed_normal_draws", "q_z_given_x_components", "q_z_given_x_on_grid"]


def fixed_normal_draws(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) standard-normal draws fixed by ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, dim), generator=g)


@torch.no_grad()
def q_z_given_x_components(
    model: SDGM,
    x: np.ndarray,
    n_b: int = 16,
    seed: int = 0,
    batch_size: int = 8192,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The log-normal components of the amortised q(z|x): ``(loc, scale)`` of log z, each (N, n_b).

    Parameters
    ----------
    model
        A trained SDGM.
    x
        Standardised features (N, D_x).
    n_b
        Number N of b samples in the mixture.
    seed
        Fixes the b draws (shared by all galaxies).
    batch_size
        Galaxies per network call.
    device
        Where the networks run (``cpu``, ``cuda``, ``cuda:k``).
    """
    device = torch.device(device)
    model = model.to(device)
    eps = fixed_normal_draws(n_b, model.config.dim_b, seed).to(device)
    loc = np.empty((x.shape[0], n_b))
    scale = np.empty((x.shape[0], n_b))
    for s in range(0, x.shape[0], batch_size):
        xb = torch.as_tensor(x[s : s + batch_size], dtype=torch.float32, device=device)
        b = model.b_samples(xb, eps)  # (n_b, n, B)
        q_z = model.q_z_given_bx(b, xb.expand(n_b, -1, -1))
        loc[s : s + batch_size] = q_z.loc.T.cpu().numpy()
        scale[s : s + batch_size] = q_z.scale.T.cpu().numpy()
    return loc, scale


def q_z_given_x_on_grid(model: SDGM, x: np.ndarray, zgrid: np.ndarray, n_b: int = 16, seed: int = 0,
                        device: str | torch.device = "cpu") -> np.ndarray:
    """Densities of the amortised q(z|x) at the grid points (cell averages), (N, len(zgrid)).

    ``model``, ``x``, ``n_b``, ``seed`` and ``device`` are those of :func:`q_z_given_x_components`;
    ``zgrid`` is the redshift grid (RAIL's ``linspace(zmin, zmax, nzbins)``).
    """
    loc, scale = q_z_given_x_components(model, x, n_b=n_b, seed=seed, device=device)
    return lognormal_mixture_on_grid(loc, scale, zgrid)
