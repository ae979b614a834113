"""Photo-z evaluation metrics with RAIL's definitions, without importing RAIL.

The PDF metrics are computed by qp (the library RAIL's evaluators call), on a ``qp.interp``
ensemble built from the densities on the redshift grid:

* CDE loss (Izbicki & Lee 2017), ``E[int p(z)^2 dz] - 2 E[p(z_true)]``, with
  ``qp.metrics.concrete_metric_classes.CDELossMetric`` evaluated on the PDFs' own grid
  (as RAIL's ``OldEvaluator``; the ``DistToPointEvaluator`` default grid is ``linspace(0, 2.5, 301)``).
* PIT = CDF(z_true) and its Kolmogorov-Smirnov, Cramer-von Mises and Anderson-Darling
  statistics and PIT outlier rate, with ``qp.metrics.pit.PIT``.

The point metrics use ``ez = (z_point - z_true) / (1 + z_true)`` and qp's point-metric classes
(``qp.metrics.point_estimate_metric_classes``), evaluated exactly (no t-digest):

* ``sigma_iqr`` = IQR(ez) / 1.349, ``bias`` = median(ez),
* ``outlier_rate`` = fraction with ``|ez| > max(0.06, 3 sigma_iqr)`` (LSST Science Book),
* ``sigma_nmad`` = 1.4826 median(|ez - median(ez)|),
* ``catastrophic_fraction`` = fraction with ``|ez| > 0.15``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .grid import normalise, point_estimates

__all__ = [
    "as_grid_pdfs",
    "to_ensemble",
    "ez",
    "pit_values",
    "pit_ks",
    "ks_uniform",
    "cde_loss",
    "pit_metrics",
    "point_metrics",
    "binned_point_metrics",
    "evaluate",
    "CATASTROPHIC_EZ",
    "NMAD_SCALE",
    "METRIC_LABELS",
    "POINT_METRICS",
    "metric_rows",
]

CATASTROPHIC_EZ = 0.15
NMAD_SCALE = 1.4826

#: label and format of each number :func:`evaluate` returns, for every table that shows them
METRIC_LABELS: dict[str, tuple[str, str]] = {  # counts; the CDE loss; PIT statistics; point metrics
    "n": ("galaxies", "{:d}"), "n_dropped": ("left out (no finite redshift)", "{:d}"),
    "cdeloss": ("CDE loss", "{:.4f}"),
    "pit_ks": ("PIT KS", "{:.4f}"), "pit_cvm": ("PIT CvM", "{:.3f}"), "pit_ad": ("PIT AD", "{:.3f}"),
    "pit_outlier_rate": ("PIT outlier rate", "{:.4f}"),
    "sigma_iqr": ("sigma_IQR", "{:.4f}"), "bias": ("bias", "{:+.5f}"), "outlier_rate": ("outlier rate", "{:.4f}"),
    "sigma_nmad": ("sigma_NMAD", "{:.4f}"), "catastrophic_fraction": ("\\|ez\\| > 0.15", "{:.4f}"),
}
#: the metrics of a point estimate (:func:`point_metrics`)
POINT_METRICS = ("sigma_iqr", "bias", "outlier_rate", "sigma_nmad", "catastrophic_fraction")


def metric_rows(keys: Sequence[str], point_estimate: str = "") -> list[tuple[str, str, str]]:
    """``(key, label, format)`` table rows of metrics of :data:`METRIC_LABELS`; the point metrics'
    labels name ``point_estimate`` (e.g. ``"zmode"``) when it is given."""
    rows = []
    for k in keys:
        label, fmt = METRIC_LABELS[k]
        rows.append((k, f"{label} ({point_estimate})" if point_estimate and k in POINT_METRICS else label, fmt))
    return rows

log = logging.getLogger(__name__)


def _is_ensemble(obj: Any) -> bool:
    return hasattr(obj, "pdf") and hasattr(obj, "npdf") and hasattr(obj, "cdf")


def as_grid_pdfs(zgrid: np.ndarray | None, pdfs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Densities on a grid from either an (N, nz) array or a ``qp.Ensemble``.

    Parameters
    ----------
    zgrid
        Redshift grid (nz,).  May be ``None`` for a ``qp.interp`` ensemble, whose own ``xvals``
        are then used.
    pdfs
        (N, nz) densities at ``zgrid``, or a ``qp.Ensemble`` (evaluated at ``zgrid``).

    Returns
    -------
    zgrid, pdfs
        The grid (float64, strictly increasing) and the (N, nz) densities, normalised to unit
        trapezoid integral on the grid.
    """
    if _is_ensemble(pdfs):
        if zgrid is None:
            xv = pdfs.metadata.get("xvals") if hasattr(pdfs, "metadata") else None
            if xv is None:
                raise ValueError("zgrid is required for a qp.Ensemble that is not a qp.interp ensemble")
            zgrid = np.asarray(xv, dtype=np.float64).reshape(-1)
        zgrid = np.asarray(zgrid, dtype=np.float64)
        dens = np.asarray(pdfs.pdf(zgrid), dtype=np.float64).reshape(pdfs.npdf, len(zgrid))
    else:
        if zgrid is None:
            raise ValueError("zgrid is required when pdfs is an array")
        zgrid = np.asarray(zgrid, dtype=np.float64)
        dens = np.atleast_2d(np.asarray(pdfs, dtype=np.float64))
    if zgrid.ndim != 1 or len(zgrid) < 2 or not np.all(np.diff(zgrid) > 0):
        raise ValueError("zgrid must be a strictly increasing 1-d array with at least 2 points")
    if dens.shape[1] != len(zgrid):
        raise ValueError(f"pdfs has {dens.shape[1]} columns but zgrid has {len(zgrid)} points")
    dens, _ = normalise(zgrid, dens)
    return zgrid, dens


def to_ensemble(zgrid: np.ndarray, pdfs: np.ndarray, ancil: dict | None = None):
    """A ``qp.interp`` ensemble of densities on a grid (the form PhotoVAEz outputs in RAIL)."""
    import qp

    ens = qp.Ensemble(qp.interp, data=dict(xvals=np.asarray(zgrid, np.float64), yvals=np.asarray(pdfs, np.float64)))
    if ancil:
        ens.set_ancil({k: np.asarray(v) for k, v in ancil.items()})
    return ens


def _ensemble_and_grid(zgrid, pdfs):
    """(zgrid, dense pdfs, qp ensemble) from an array or an ensemble."""
    zg, dens = as_grid_pdfs(zgrid, pdfs)
    ens = pdfs if _is_ensemble(pdfs) else to_ensemble(zg, dens)
    return zg, dens, ens


def ez(zpoint: np.ndarray, ztrue: np.ndarray) -> np.ndarray:
    """``(zpoint - ztrue) / (1 + ztrue)``."""
    zpoint = np.asarray(zpoint, dtype=np.float64).reshape(-1)
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    return (zpoint - ztrue) / (1.0 + ztrue)


def pit_values(zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray) -> np.ndarray:
    """Probability integral transform, ``CDF_i(z_true,i)`` of each PDF.

    Computed as ``qp.metrics.pit.PIT`` does, from the CDF of the ``qp.interp`` ensemble of the
    densities (a true redshift below the grid gives 0, above it 1); for densities on a grid that
    CDF is computed directly, to the same numbers, without building the ensemble.

    Parameters
    ----------
    zgrid
        Redshift grid (nz,); ``None`` for a ``qp.interp`` ensemble.
    pdfs
        (N, nz) densities on ``zgrid`` or a ``qp.Ensemble``.
    ztrue
        (N,) true redshifts.

    Returns
    -------
    numpy.ndarray
        (N,) PIT values in [0, 1].
    """
    if _is_ensemble(pdfs):
        return _pit_from_ensemble(pdfs, ztrue)
    zgrid, dens = as_grid_pdfs(zgrid, pdfs)
    return _pit_on_grid(zgrid, dens, ztrue)


def _pit_on_grid(zgrid: np.ndarray, dens: np.ndarray, ztrue: np.ndarray) -> np.ndarray:
    """What :func:`_pit_from_ensemble` gives for the ``qp.interp`` ensemble of ``dens``, without
    building it: qp's cumulative integral (``y_0 dz_0 / 2`` at the first point, the cumulative
    trapezoids from the second on), normalised to end at 1, interpolated linearly at each
    galaxy's own true redshift; 0 below the grid, 1 above it, 0 for a NaN."""
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    if len(ztrue) != len(dens):
        raise ValueError(f"{len(dens)} PDFs but {len(ztrue)} true redshifts")
    dz = np.diff(zgrid)
    cum = np.empty(dens.shape)
    cum[:, 0] = 0.5 * dens[:, 0] * dz[0]
    np.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]) * dz[None, :], axis=1, out=cum[:, 1:])
    cum /= cum[:, -1:]
    j = np.clip(np.searchsorted(zgrid, ztrue, side="right") - 1, 0, len(zgrid) - 2)
    rows = np.arange(len(ztrue))
    with np.errstate(invalid="ignore"):
        t = (ztrue - zgrid[j]) / dz[j]
        pit = cum[rows, j] + t * (cum[rows, j + 1] - cum[rows, j])
        pit = np.where(ztrue < zgrid[0], 0.0, np.where(ztrue > zgrid[-1], 1.0, pit))
    return np.where(np.isfinite(pit), pit, 0.0)


def _pit_from_ensemble(ens, ztrue: np.ndarray) -> np.ndarray:
    """Each PDF's CDF at its own true redshift, as ``qp.metrics.pit.PIT`` gathers its samples
    (``ens.cdf`` of a column of true values; NaN -> 0), without building qp's quantile ensemble of
    the PIT distribution (slow, warns below 100 galaxies, fails for one)."""
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    if len(ztrue) != ens.npdf:
        raise ValueError(f"{ens.npdf} PDFs but {len(ztrue)} true redshifts")
    pit = np.asarray(ens.cdf(ztrue[:, None]), dtype=np.float64).reshape(-1)
    return np.where(np.isfinite(pit), pit, 0.0)


def cde_loss(zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray) -> float:
    """Conditional density estimation loss, ``E[int p^2 dz] - 2 E[p(z_true)]`` (lower is better).

    qp's ``CDELossMetric`` on the PDFs' grid: the integral is a trapezoid sum on ``zgrid`` and
    ``p(z_true)`` is the density at the grid point nearest to ``z_true``.  For an ensemble
    without a grid of its own, ``zgrid`` is the evaluation grid.
    """
    zg, _, ens = _ensemble_and_grid(zgrid, pdfs)
    return _cde_from_ensemble(zg, ens, ztrue)


def _cde_from_ensemble(zgrid: np.ndarray, ens, ztrue: np.ndarray) -> float:
    from qp.metrics.concrete_metric_classes import CDELossMetric

    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    if len(ztrue) != ens.npdf:
        raise ValueError(f"{ens.npdf} PDFs but {len(ztrue)} true redshifts")
    return float(CDELossMetric(eval_grid=np.asarray(zgrid, np.float64)).evaluate(ens, ztrue))


def pit_ks(pit: np.ndarray):
    """Kolmogorov-Smirnov test of PIT values against U(0, 1) (``scipy.stats.kstest``; the
    statistic qp's ``PIT.evaluate_PIT_KS`` reports).  Returns scipy's result (statistic, pvalue)."""
    from scipy.stats import kstest

    return kstest(np.clip(np.asarray(pit, np.float64).reshape(-1), 0.0, 1.0), "uniform")


def ks_uniform(u: np.ndarray) -> float:
    """KS distance between the sample ``u`` and U(0, 1) (:func:`pit_ks`); NaN for an empty sample."""
    return float(pit_ks(u).statistic) if np.size(u) else float("nan")


def pit_metrics(pit: np.ndarray) -> dict[str, float]:
    """KS, CvM and AD statistics of PIT values against U(0, 1), and the PIT outlier rate.

    Uses ``qp.metrics.pit.PIT``'s methods for the statistics (scipy ``kstest``, ``cramervonmises``,
    ``anderson_ksamp`` against a uniform grid).  The PIT outlier rate is the fraction of PIT values
    below 1e-4 or above 0.9999 (Schmidt et al. 2020), counted directly: qp's version reads it off a
    quantile fit of the PIT distribution, which gave negative values and values far above 1 on a
    few hundred galaxies.
    """
    from qp.metrics.pit import PIT

    pit = np.asarray(pit, dtype=np.float64).reshape(-1)
    obj = PIT.__new__(PIT)  # PIT's metrics from given PIT values (its __init__ needs an ensemble)
    obj._pit_samps = pit
    grid = np.linspace(0, 1, 100)
    if len(pit) < len(grid):
        grid = np.linspace(0, 1, len(pit))
    obj._pit = PIT._produce_output_ensemble(np.quantile(pit, grid), grid)
    ks = pit_ks(pit)
    cvm = obj.evaluate_PIT_CvM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: "p-value capped" / attribute deprecations
        ad = obj.evaluate_PIT_anderson_ksamp()
        ad_sig = getattr(ad, "pvalue", getattr(ad, "significance_level", np.nan))
    out = float(np.mean((pit < 1e-4) | (pit > 0.9999)))
    return {
        "pit_ks": float(ks.statistic),
        "pit_ks_pvalue": float(ks.pvalue),
        "pit_cvm": float(cvm.statistic),
        "pit_cvm_pvalue": float(cvm.pvalue),
        "pit_ad": float(ad.statistic),
        "pit_ad_significance": float(ad_sig),
        "pit_outlier_rate": out,
    }


def point_metrics(zpoint: np.ndarray, ztrue: np.ndarray) -> dict[str, float]:
    """LSST point metrics of ``ez = (zpoint - ztrue) / (1 + ztrue)``.

    Returns
    -------
    dict
        ``sigma_iqr`` (IQR / 1.349), ``bias`` (median ez), ``outlier_rate`` (``|ez| > max(0.06,
        3 sigma_iqr)``), ``sigma_nmad`` (1.4826 MAD), ``catastrophic_fraction`` (``|ez| > 0.15``),
        all from qp's point-metric classes except the last; NaN for an empty sample.
    """
    from qp.metrics.point_estimate_metric_classes import PointBias, PointOutlierRate, PointSigmaIQR, PointSigmaMAD

    zpoint = np.asarray(zpoint, dtype=np.float64).reshape(-1)
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    if len(zpoint) != len(ztrue):
        raise ValueError(f"{len(zpoint)} point estimates but {len(ztrue)} true redshifts")
    if len(ztrue) == 0:
        return {k: float("nan") for k in POINT_METRICS}
    return {
        "sigma_iqr": float(PointSigmaIQR().evaluate(zpoint, ztrue)),
        "bias": float(PointBias().evaluate(zpoint, ztrue)),
        "outlier_rate": float(PointOutlierRate().evaluate(zpoint, ztrue)),
        "sigma_nmad": float(PointSigmaMAD().evaluate(zpoint, ztrue)),
        "catastrophic_fraction": float(np.mean(np.abs(ez(zpoint, ztrue)) > CATASTROPHIC_EZ)),
    }


def binned_point_metrics(
    x: np.ndarray, zpoint: np.ndarray, ztrue: np.ndarray, bins: np.ndarray | int = 10, min_count: int = 10
) -> dict[str, np.ndarray]:
    """Point metrics in bins of a quantity ``x`` (a magnitude, the true or photometric redshift).

    Parameters
    ----------
    x
        (N,) binning variable.
    zpoint, ztrue
        (N,) point estimates and true redshifts.
    bins
        Bin edges, or a number of equal-count (quantile) bins.
    min_count
        Bins with fewer galaxies get NaN metrics.

    Returns
    -------
    dict
        ``edges`` (nb + 1), ``centers``, ``count`` and one (nb,) array per key of
        :func:`point_metrics`.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    zpoint = np.asarray(zpoint, dtype=np.float64).reshape(-1)
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(zpoint) & np.isfinite(ztrue)
    if np.ndim(bins) == 0:
        edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, int(bins) + 1)))
    else:
        edges = np.asarray(bins, dtype=np.float64)
    nb = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    inside = ok & (x >= edges[0]) & (x <= edges[-1])
    out: dict[str, np.ndarray] = {
        "edges": edges,
        "centers": 0.5 * (edges[1:] + edges[:-1]),
        "count": np.zeros(nb, np.int64),
    }
    keys = POINT_METRICS
    for k in keys:
        out[k] = np.full(nb, np.nan)
    for b in range(nb):
        m = inside & (idx == b)
        out["count"][b] = int(m.sum())
        if m.sum() >= max(min_count, 1):
            pm = point_metrics(zpoint[m], ztrue[m])
            for k in keys:
                out[k][b] = pm[k]
    return out


def evaluate(
    zgrid: np.ndarray | None,
    pdfs: Any,
    ztrue: np.ndarray,
    zpoint: np.ndarray | None = None,
) -> dict[str, Any]:
    """All PDF and point metrics of photo-z PDFs against true redshifts.

    Parameters
    ----------
    zgrid
        Redshift grid (nz,).  ``None`` is allowed for a ``qp.interp`` ensemble (its ``xvals``).
    pdfs
        (N, nz) densities on ``zgrid`` (normalised here to unit integral), or a ``qp.Ensemble``.
    ztrue
        (N,) true (spectroscopic) redshifts.  Galaxies with a non-finite true redshift or point
        estimate are left out (their number is ``n_dropped``).
    zpoint
        (N,) point estimates for the point metrics.  Default: the ensemble's ``zmode`` ancil if
        there is one, else the mode of the PDFs on the grid (:func:`photovaez.grid.point_estimates`).

    Returns
    -------
    dict
        ``n``, ``n_dropped``, ``cdeloss``, ``pit_ks``, ``pit_ks_pvalue``, ``pit_cvm``,
        ``pit_cvm_pvalue``, ``pit_ad``, ``pit_ad_significance``, ``pit_outlier_rate``,
        ``sigma_iqr``, ``bias``, ``outlier_rate``, ``sigma_nmad``, ``catastrophic_fraction``
        (plain floats and ints).

    Examples
    --------
    >>> m = evaluate(zgrid, pdfs, ztrue)            # doctest: +SKIP
    >>> m["pit_ks"], m["sigma_nmad"]                # doctest: +SKIP
    """
    zg, dens = as_grid_pdfs(zgrid, pdfs)
    ztrue = np.asarray(ztrue, dtype=np.float64).reshape(-1)
    if len(ztrue) != len(dens):
        raise ValueError(f"{len(dens)} PDFs but {len(ztrue)} true redshifts")
    if zpoint is None:
        anc = getattr(pdfs, "ancil", None) if _is_ensemble(pdfs) else None
        if anc is not None and "zmode" in anc:
            zpoint = np.asarray(anc["zmode"], dtype=np.float64).reshape(-1)
        else:
            zpoint = point_estimates(zg, dens)["zmode"]
    zpoint = np.asarray(zpoint, dtype=np.float64).reshape(-1)
    if len(zpoint) != len(ztrue):
        raise ValueError(f"{len(zpoint)} point estimates but {len(ztrue)} true redshifts")
    ok = np.isfinite(ztrue) & np.isfinite(zpoint)
    if not ok.all():
        log.warning("evaluate: leaving out %d galaxies with a non-finite true redshift or point estimate",
                    int((~ok).sum()))
    dens, zt, zp = dens[ok], ztrue[ok], zpoint[ok]
    out: dict[str, Any] = {"n": int(ok.sum()), "n_dropped": int((~ok).sum())}
    if out["n"] == 0:
        raise ValueError("evaluate: no galaxy with a finite true redshift")
    # PDF metrics on the input ensemble itself where it is one (its exact CDF for the PIT),
    # else on the qp.interp ensemble of the densities on the grid
    ens = pdfs if (_is_ensemble(pdfs) and ok.all()) else to_ensemble(zg, dens)
    out["cdeloss"] = _cde_from_ensemble(zg, ens, zt)
    out.update(pit_metrics(_pit_from_ensemble(ens, zt)))
    out.update(point_metrics(zp, zt))
    return out
