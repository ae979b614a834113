"""Mixtures of log-normals on the redshift grid, as exact cell averages.

One operation serves every PDF of PhotoVAEz that is a sum of Gaussians in ``u = log z``: the
amortised q(z|x) (a mixture of the log-normals q(z|b_k, x), :mod:`photovaez.amortised`) and the
kernel density estimates of posterior samples (:func:`kde_on_grid`, for HMC and SNIS).  A
component ``N(u; loc, scale^2)`` contributes its probability between the log cell edges
(:func:`photovaez.grid.cell_edges`); the density at a grid point is its cell's mass divided by the
cell width, so narrow PDFs keep their mass on a coarse grid.

The masses are computed in float32 with JAX, from whichever tail of the normal CDF is small
(``Phi(b) - Phi(a)`` below the median, ``Phi(-a) - Phi(-b)`` above it), so that both tails keep
their relative precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from .grid import cell_edges

__all__ = ["lognormal_mixture_on_grid", "silverman_bandwidth", "kde_on_grid"]


@jax.jit
def _cell_masses(loc: jnp.ndarray, scale: jnp.ndarray, weights: jnp.ndarray, log_edges: jnp.ndarray) -> jnp.ndarray:
    """(G, nz) sum_k w_k P(u_k in cell) for components (G, K) and log cell edges (nz + 1,)."""
    t = (log_edges[None, None, :] - loc[..., None]) / scale[..., None]  # (G, K, nz + 1)
    lo, hi = t[..., :-1], t[..., 1:]
    upper = lo > 0  # the cell lies above the component's median: use the upper tail
    mass = jnp.where(upper, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    return jnp.einsum("gk,gkn->gn", weights, mass)


def lognormal_mixture_on_grid(loc: np.ndarray, scale: np.ndarray, zgrid: np.ndarray,
                              weights: np.ndarray | None = None, chunk_rows: int = 2**22) -> np.ndarray:
    """Cell-averaged densities in z of mixtures of log-normals, (G, len(zgrid)).

    Parameters
    ----------
    loc, scale
        (G, K) means and widths of the components in ``u = log z`` (``scale`` > 0).
    zgrid
        Redshift grid (nz,).
    weights
        (G, K) component weights, each row summing to 1 (default: 1/K each).
    chunk_rows
        Cap on G x K x nz evaluated at once (memory bound).

    Returns
    -------
    numpy.ndarray
        Densities at the grid points (cell masses / cell widths); rows integrate to the mass the
        mixture has inside the grid's cells.
    """
    loc = np.atleast_2d(np.asarray(loc, np.float64))
    scale = np.broadcast_to(np.asarray(scale, np.float64), loc.shape)
    G, K = loc.shape
    w = np.full((G, K), 1.0 / K) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), loc.shape)
    edges = cell_edges(np.asarray(zgrid, np.float64))
    with np.errstate(divide="ignore"):
        log_edges = jnp.asarray(np.log(edges), jnp.float32)
    step = max(1, int(chunk_rows) // max(K * len(edges), 1))
    out = np.empty((G, len(zgrid)))
    for s in range(0, G, step):
        sl = slice(s, s + step)
        n = len(loc[sl])
        pad = step - n if G > step else 0  # pad the last chunk: one compiled shape
        args = [np.pad(a[sl], ((0, pad), (0, 0)), mode="edge") for a in (loc, scale, w)]
        m = _cell_masses(*(jnp.asarray(a, jnp.float32) for a in args), log_edges)
        out[sl] = np.asarray(m, np.float64)[:n]
    return out / np.diff(edges)[None, :]


def silverman_bandwidth(u: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Silverman's rule ``0.9 min(sd, IQR/1.34) n^(-1/5)`` per row of samples ``u`` (G, S), with
    ``n`` the Kish ESS of the weights (S when unweighted) and weighted sd and quantiles."""
    u = np.asarray(u, np.float64)
    G, S = u.shape
    w = np.full((G, S), 1.0 / S) if weights is None else np.asarray(weights, np.float64)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    mean = (w * u).sum(1)
    sd = np.sqrt(np.maximum((w * (u - mean[:, None]) ** 2).sum(1), 0.0))
    order = np.argsort(u, axis=1)
    us, cw = np.take_along_axis(u, order, 1), np.cumsum(np.take_along_axis(w, order, 1), 1)

    def quantile(p: float) -> np.ndarray:
        return us[np.arange(G), np.clip((cw < p).sum(1), 0, S - 1)]

    iqr = quantile(0.75) - quantile(0.25)
    spread = np.where(iqr > 0, np.minimum(sd, iqr / 1.34), sd)
    n_eff = 1.0 / np.maximum((w**2).sum(1), 1e-300)
    return 0.9 * spread * n_eff ** (-0.2)


def kde_on_grid(u: np.ndarray, zgrid: np.ndarray, weights: np.ndarray | None = None,
                bandwidth: np.ndarray | float | None = None, min_bandwidth: float = 1e-3) -> np.ndarray:
    """Gaussian KDE of samples of ``u = log z``, as cell averages of the density in z on the grid.

    The kernel density estimate is the mixture of ``N(u_i, h^2)`` with the sample weights
    (:func:`lognormal_mixture_on_grid`).

    Parameters
    ----------
    u
        (G, S) samples of log z.
    weights
        Optional (G, S) non-negative weights (normalised here).
    bandwidth
        Fixed bandwidth(s) in log z (scalar or (G,)); default :func:`silverman_bandwidth`.
    min_bandwidth
        Lower bound of the bandwidth.
    """
    u = np.asarray(u, np.float64)
    G, S = u.shape
    w = np.full((G, S), 1.0 / S) if weights is None else np.asarray(weights, np.float64)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    h = silverman_bandwidth(u, w) if bandwidth is None else np.broadcast_to(np.asarray(bandwidth, np.float64), (G,))
    h = np.maximum(h, min_bandwidth)
    return lognormal_mixture_on_grid(u, np.broadcast_to(h[:, None], u.shape), zgrid, weights=w)
