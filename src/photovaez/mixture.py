"""Mixtures of log-normals on the redshift grid, as exact cell averages.

One operation serves every PDF of PhotoVAEz that is a sum of Gaussians in ``u = log z``: the
amortised q(z|x) (a mixture of the log-normals q(z|b_k, x), :mod:`photovaez.amortised`) and the
kernel density estimates of posterior samples (:func:`kde_on_grid`, for HMC and SNIS).  A
component ``N(u; loc, scale^2)`` contributes its probability between the log cell edges
(:func:`photovaez.grid.cell_edges`); the density at a grid point is its cell's mass divided by the
cell width, so narrow PDFs keep their mass on a coarse grid.

The masses are computed in float32 with JAX without cancellation, so that they keep their
relative precision (about 1e-5 against a float64 evaluation, in the tails too) and a galaxy's
PDF does not depend on the batch it is computed in: a cell whose width (in units of the
component's scale) times ``1 + |t|`` at its centre is below 1/4 by Simpson's rule on the normal
density, a wider one as the difference of the normal CDF in whichever tail is small
(``Phi(b) - Phi(a)`` below the median, ``Phi(-a) - Phi(-b)`` above it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .grid import cell_edges

__all__ = ["cell_masses", "split_float64", "lognormal_mixture_on_grid", "silverman_bandwidth", "kde_on_grid"]

_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_INV_SQRT_2 = float(1.0 / np.sqrt(2.0))
_SIMPSON_MAX_WIDTH = 0.25  # Simpson where width x (1 + |t|) is below this (cell width in units of the scale)


def split_float64(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 -> (hi, lo) float32 with hi + lo = v to ~1e-14 (lo = 0 where v is infinite)."""
    hi = v.astype(np.float32)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(v), v - hi.astype(np.float64), 0.0).astype(np.float32)
    return hi, lo


def cell_masses(loc_hi: jnp.ndarray, loc_lo: jnp.ndarray, scale: jnp.ndarray, weights: jnp.ndarray,
                edge_hi: jnp.ndarray, edge_lo: jnp.ndarray, log_widths: jnp.ndarray) -> jnp.ndarray:
    """(G, nz) sum_k w_k P(u_k in cell) for components (G, K) and log cell edges (nz + 1,), both
    given as float32 (hi, lo) pairs (:func:`split_float64`) so that the standardised edges keep
    float64-like accuracy, and the cells' widths in log z (nz,), exact rather than a difference of
    nearby edges.  A pure JAX function (jit it, or call it inside a jitted one).

    Each edge needs one normal density and one normal CDF, that of the smaller tail
    ``s = Phi(-|t|) = erfc(|t| / sqrt 2) / 2``: a cell above the median has mass ``s_lo - s_hi``, one below it
    ``s_hi - s_lo``, the one across it ``1 - s_hi - s_lo``, none of them a difference of two
    numbers near 1."""
    diff = (edge_hi[None, None, :] - loc_hi[..., None]) + (edge_lo[None, None, :] - loc_lo[..., None])
    t = diff / scale[..., None]  # (G, K, nz + 1)
    lo, hi = t[..., :-1], t[..., 1:]
    width = log_widths[None, None, :] / scale[..., None]
    density = jnp.exp(-0.5 * t**2) * _INV_SQRT_2PI
    mid = jnp.exp(-0.125 * (lo + hi) ** 2) * _INV_SQRT_2PI
    simpson = width * (density[..., :-1] + 4.0 * mid + density[..., 1:]) / 6.0
    small = 0.5 * jax.lax.erfc(jnp.abs(t) * _INV_SQRT_2)
    s_lo, s_hi = small[..., :-1], small[..., 1:]
    tails = jnp.where(lo > 0, s_lo - s_hi, jnp.where(hi <= 0, s_hi - s_lo, 1.0 - s_hi - s_lo))
    mass = jnp.where(width * (1.0 + jnp.abs(0.5 * (lo + hi))) < _SIMPSON_MAX_WIDTH, simpson, tails)
    return jnp.einsum("gk,gkn->gn", weights, mass)


_cell_masses = jax.jit(cell_masses)


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
        log_edges = np.log(edges)
        edge_hi, edge_lo = split_float64(log_edges)
        log_widths = np.where(np.isfinite(log_edges[:-1]), np.diff(log_edges), np.inf).astype(np.float32)
    loc_hi, loc_lo = split_float64(loc)
    step = max(1, int(chunk_rows) // max(K * len(edges), 1))
    out = np.empty((G, len(zgrid)))
    for s in range(0, G, step):
        sl = slice(s, s + step)
        n = len(loc[sl])
        pad = step - n if G > step else 0  # pad the last chunk: one compiled shape
        args = [np.pad(a[sl], ((0, pad), (0, 0)), mode="edge").astype(np.float32)
                for a in (loc_hi, loc_lo, scale, w)]
        m = _cell_masses(*args, edge_hi, edge_lo, log_widths)
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
