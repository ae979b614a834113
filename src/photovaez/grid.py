"""PDFs on RAIL's redshift grid: the grid, its cells, normalisation and point estimates.

A PDF is stored as its density at the grid points ``zgrid`` (``qp.interp``).  Where a model gives a
CDF, the density at a grid point is the probability of the point's cell divided by the cell
width (an exact cell average), so that narrow PDFs keep their mass.
"""

from __future__ import annotations

import numpy as np

__all__ = ["redshift_grid", "cell_edges", "trapezoid_weights", "normalise", "normalise_log", "point_estimates",
           "cdf_on_grid"]


def redshift_grid(zmin: float, zmax: float, nzbins: int) -> np.ndarray:
    """RAIL's grid: ``np.linspace(zmin, zmax, nzbins)``."""
    if not zmax > zmin or nzbins < 2:
        raise ValueError(f"invalid redshift grid: zmin={zmin}, zmax={zmax}, nzbins={nzbins} "
                         "(need zmax > zmin, nzbins >= 2)")
    return np.linspace(zmin, zmax, nzbins)


def cell_edges(zgrid: np.ndarray) -> np.ndarray:
    """Edges of the cells centred on the grid points (len(zgrid) + 1); the first edge is >= 0."""
    mids = 0.5 * (zgrid[1:] + zgrid[:-1])
    first = zgrid[0] - (mids[0] - zgrid[0])
    last = zgrid[-1] + (zgrid[-1] - mids[-1])
    return np.concatenate([[max(first, 0.0)], mids, [last]])


def trapezoid_weights(zgrid: np.ndarray) -> np.ndarray:
    """Weights ``w`` with ``pdf @ w`` = the trapezoid integral of each row on ``zgrid``."""
    dz = np.diff(np.asarray(zgrid, np.float64))
    w = np.zeros(len(dz) + 1)
    w[:-1] += 0.5 * dz
    w[1:] += 0.5 * dz
    return w


def normalise(zgrid: np.ndarray, pdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise densities on the grid to unit trapezoid integral.

    Returns the normalised PDFs (float64) and a flag per row: 1 where the input was not finite or
    had no mass or a negative value (that row is returned flat, the uninformative PDF), else 0.
    """
    pdf = np.asarray(pdf, dtype=np.float64)
    w = trapezoid_weights(zgrid)
    norm = pdf @ w  # NaN or +-inf anywhere in a row makes its integral non-finite
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(norm) & (norm > 0)) | (pdf.min(axis=1, initial=0.0) < 0)
    out = pdf / np.where(bad, 1.0, norm)[:, None]
    if bad.any():
        out[bad] = 1.0 / w.sum()
    return out, bad.astype(np.int8)


def normalise_log(zgrid: np.ndarray, log_pdf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise densities given by their logarithm (up to a constant per row) on the grid.

    The maximum of each row is subtracted before exponentiating, so any scale works.

    Returns
    -------
    pdf, flag
        As :func:`normalise` (``-inf`` everywhere or NaN gives a flat row and flag 1).
    log_norm
        (N,) log of the trapezoid integral of ``exp(log_pdf)`` (``-inf`` for flagged rows).
    """
    log_pdf = np.asarray(log_pdf, dtype=np.float64)
    mx = np.max(log_pdf, axis=1, keepdims=True)
    ok = np.isfinite(mx[:, 0])
    rel = np.exp(log_pdf - np.where(ok[:, None], mx, 0.0))
    norm = np.trapezoid(rel, zgrid, axis=1)
    pdf, flag = normalise(zgrid, rel)
    with np.errstate(divide="ignore"):
        log_norm = np.where(ok & (norm > 0), mx[:, 0] + np.log(np.maximum(norm, 1e-300)), -np.inf)
    return pdf, flag, log_norm


def cdf_on_grid(zgrid: np.ndarray, pdf: np.ndarray) -> np.ndarray:
    """Cumulative trapezoid integral of normalised PDFs, (N, len(zgrid)), ending at 1."""
    dz = np.diff(zgrid)
    cdf = np.empty(pdf.shape)
    cdf[:, 0] = 0.0
    np.cumsum((pdf[:, 1:] + pdf[:, :-1]) * (0.5 * dz)[None, :], axis=1, out=cdf[:, 1:])
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    return cdf


def point_estimates(zgrid: np.ndarray, pdf: np.ndarray) -> dict[str, np.ndarray]:
    """``zmode`` (grid maximum refined by a parabola through its neighbours), ``zmean`` and
    ``zmedian`` of normalised PDFs on the grid."""
    n, nz = pdf.shape
    k = np.argmax(pdf, axis=1)
    kc = np.clip(k, 1, nz - 2)
    rows = np.arange(n)
    ym, y0, yp = pdf[rows, kc - 1], pdf[rows, kc], pdf[rows, kc + 1]
    denom = ym - 2 * y0 + yp
    dz = zgrid[kc + 1] - zgrid[kc]
    shift = np.where((denom < 0) & (k == kc), 0.5 * (ym - yp) / np.where(denom < 0, denom, -1.0), 0.0)
    zmode = np.where(k == kc, zgrid[kc] + np.clip(shift, -0.5, 0.5) * dz, zgrid[k])
    w = trapezoid_weights(zgrid)
    zmean = (pdf @ (w * zgrid)) / (pdf @ w)
    cdf = cdf_on_grid(zgrid, pdf)
    j = np.clip((cdf < 0.5).sum(axis=1), 1, nz - 1)  # the first point with cdf >= 0.5 (cdf is non-decreasing)
    c0, c1 = cdf[rows, j - 1], cdf[rows, j]
    t = np.where(c1 > c0, (0.5 - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
    zmedian = zgrid[j - 1] + t * (zgrid[j] - zgrid[j - 1])
    return {"zmode": zmode, "zmean": zmean, "zmedian": zmedian}
