"""Diagnostic plots of photo-z PDFs against true redshifts (matplotlib, Agg backend).

Each ``plot_*`` function takes the PDFs as ``zgrid`` + (N, nz) densities or a ``qp.Ensemble``
(with ``zgrid=None`` for a ``qp.interp`` ensemble), the true redshifts (and magnitudes where
needed) and an output path; it writes a PNG and returns the path.  The matching ``figure_*``
function returns the :class:`matplotlib.figure.Figure` without saving it.

The figures are drawn with matplotlib's object-oriented API on the Agg canvas: no pyplot state,
and the user's interactive backend is left alone.

:func:`plot_dz_vs_mag_and_z` takes point estimates rather than PDFs: the density of
dz/(1 + z) against magnitude and true redshift with its running median and 16/84 percentiles.

Point estimates default to the ensemble's ``zmode`` ancil, else the PDF mode on the grid.

Two plots are about the model rather than the PDFs: :func:`plot_latent_embeddings` (the latent
means of a table, PCA to 2-D, coloured by redshift) and :func:`plot_outlier_scores` (log p(x) of
clean against corrupted photometry, with the rank AUROC).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .grid import point_estimates
from .metrics import (
    CATASTROPHIC_EZ,
    _is_ensemble,
    as_grid_pdfs,
    binned_point_metrics,
    ks_uniform,
    pit_values,
    point_metrics,
)

__all__ = [
    "figure_zphot_zspec",
    "figure_pit_hist",
    "figure_pit_qq",
    "figure_nz",
    "figure_metrics_vs_mag",
    "figure_metrics_vs_z",
    "figure_dz_vs_mag_and_z",
    "figure_latent_embeddings",
    "figure_outlier_scores",
    "pca_2d",
    "rank_auroc",
    "plot_zphot_zspec",
    "plot_pit_hist",
    "plot_pit_qq",
    "plot_nz",
    "plot_metrics_vs_mag",
    "plot_metrics_vs_z",
    "plot_dz_vs_mag_and_z",
    "plot_latent_embeddings",
    "plot_outlier_scores",
    "save",
]

DPI = 100


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, ax: Any, title: str | None) -> Figure:
    """Set the optional title on ``ax`` and lay the figure out."""
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _zpoint(zgrid, pdfs, zpoint) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zg, dens = as_grid_pdfs(zgrid, pdfs)
    if zpoint is None:
        anc = getattr(pdfs, "ancil", None) if _is_ensemble(pdfs) else None
        if anc is not None and "zmode" in anc:
            zpoint = np.asarray(anc["zmode"], np.float64).reshape(-1)
        else:
            zpoint = point_estimates(zg, dens)["zmode"]
    return zg, dens, np.asarray(zpoint, np.float64).reshape(-1)


def save(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> str:
    """Write a figure as PNG (creating the folder) and return the path as a string."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


# ------------------------------------------------------------------------------------------------
# figures


def figure_zphot_zspec(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, zpoint: np.ndarray | None = None,
    bins: int = 120, title: str | None = None,
) -> Figure:
    """2-D histogram (log colour scale) of the point photo-z against the true redshift, with the
    1:1 line, the ``|ez| = 0.15`` catastrophic-outlier lines and the point metrics in a legend."""
    from matplotlib.colors import LogNorm

    zg, _, zp = _zpoint(zgrid, pdfs, zpoint)
    zt = np.asarray(ztrue, np.float64).reshape(-1)
    lim = (float(zg[0]), float(zg[-1]))
    fig = _new_figure((5.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    h = ax.hist2d(zt, zp, bins=bins, range=[lim, lim], cmap="viridis", norm=LogNorm(), cmin=1)
    fig.colorbar(h[3], ax=ax, label="galaxies")
    line = np.array(lim)
    ax.plot(line, line, "w-", lw=0.8)
    for s in (1, -1):
        ax.plot(line, line + s * CATASTROPHIC_EZ * (1 + line), "w--", lw=0.6)
    pm = point_metrics(zp, zt)
    ax.text(0.03, 0.97, f"N = {len(zt)}\n$\\sigma_{{NMAD}}$ = {pm['sigma_nmad']:.4f}\n"
            f"bias = {pm['bias']:+.4f}\noutliers = {pm['outlier_rate']:.3f}\n"
            f"|ez|>0.15: {pm['catastrophic_fraction']:.3f}", transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, lw=0))
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("$z_{spec}$ (true)")
    ax.set_ylabel("$z_{phot}$ (point estimate)")
    return _finish(fig, ax, title)


def figure_pit_hist(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, bins: int = 50, title: str | None = None,
    pit: np.ndarray | None = None,
) -> Figure:
    """Histogram of the PIT values (density) with the uniform expectation and its +-1 sigma
    Poisson band; the KS statistic in the legend."""
    if pit is None:
        pit = pit_values(zgrid, pdfs, ztrue)
    n = len(pit)
    fig = _new_figure((5.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(pit, bins=bins, range=(0, 1), density=True, color="C0", alpha=0.75,
            label=f"PIT (KS = {ks_uniform(pit):.4f})")
    err = np.sqrt(bins / max(n, 1))  # relative Poisson error of a bin, in density units
    ax.axhspan(1 - err, 1 + err, color="k", alpha=0.12, lw=0)
    ax.axhline(1.0, color="k", lw=1, label="uniform")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("PIT = CDF($z_{true}$)")
    ax.set_ylabel("density")
    ax.legend(loc="upper center", fontsize=8)
    return _finish(fig, ax, title)


def figure_pit_qq(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, n_quantiles: int = 101, title: str | None = None,
    pit: np.ndarray | None = None,
) -> Figure:
    """PIT quantile-quantile (percentile-percentile) plot: quantiles of the PIT values against
    those of U(0, 1), with the diagonal; the lower panel shows their difference."""
    if pit is None:
        pit = pit_values(zgrid, pdfs, ztrue)
    q = np.linspace(0, 1, n_quantiles)
    qp_ = np.quantile(pit, q)
    fig = _new_figure((4.6, 5.2))
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    ax = fig.add_subplot(gs[0])
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.plot(q, qp_, "C3-", lw=1.5, label="PIT quantiles")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("$Q_{data}$ (PIT quantile)")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    ax2 = fig.add_subplot(gs[1], sharex=ax)
    ax2.axhline(0, color="k", lw=1, ls="--")
    ax2.plot(q, qp_ - q, "C3-", lw=1.5)
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("$Q_{theory}$ (uniform quantile)")
    ax2.set_ylabel("$\\Delta Q$")
    fig.subplots_adjust(left=0.17, right=0.96, top=0.93 if title else 0.97, bottom=0.1)
    return fig


def figure_nz(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, bins: int | None = None, title: str | None = None,
) -> Figure:
    """The stacked n(z) (mean of the PDFs) against the histogram of the true redshifts."""
    zg, dens = as_grid_pdfs(zgrid, pdfs)
    zt = np.asarray(ztrue, np.float64).reshape(-1)
    stacked = dens.mean(axis=0)
    nb = bins or max(10, min(100, (len(zg) - 1) // 3))
    fig = _new_figure((5.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(zt, bins=nb, range=(zg[0], zg[-1]), density=True, histtype="stepfilled", color="0.7",
            label="true n(z)")
    ax.plot(zg, stacked, "C0-", lw=1.5, label="stacked PDFs")
    ax.set_xlim(zg[0], zg[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("redshift z")
    ax.set_ylabel("n(z) (normalised)")
    ax.legend(fontsize=8)
    return _finish(fig, ax, title)


def _figure_binned(x, zp, zt, bins, xlabel, title) -> Figure:
    b = binned_point_metrics(x, zp, zt, bins=bins)
    fig = _new_figure((5.2, 5.0))
    ax1 = fig.add_subplot(2, 1, 1)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax1)
    c = b["centers"]
    ax1.plot(c, b["sigma_nmad"], "o-", color="C0", ms=4, label="$\\sigma_{NMAD}$")
    ax1.plot(c, b["sigma_iqr"], "s--", color="C2", ms=3, label="$\\sigma_{IQR}$")
    ax1.set_ylabel("scatter of $e_z$")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    ax1.tick_params(labelbottom=False)
    ax2.plot(c, b["outlier_rate"], "o-", color="C3", ms=4, label="outliers, |ez| > max(0.06, 3$\\sigma_{IQR}$)")
    ax2.plot(c, b["catastrophic_fraction"], "s--", color="C1", ms=3, label="|ez| > 0.15")
    ax2.set_ylabel("outlier fraction")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel(xlabel)
    ax2.set_xlim(b["edges"][0], b["edges"][-1])
    ax2.legend(fontsize=7)
    return _finish(fig, ax1, title)


def figure_metrics_vs_mag(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, mag: np.ndarray, bins: int | np.ndarray = 8,
    zpoint: np.ndarray | None = None, mag_label: str = "magnitude", title: str | None = None,
) -> Figure:
    """sigma_NMAD (and sigma_IQR) and the outlier rates in bins of a magnitude (default: 8
    equal-count bins)."""
    _, _, zp = _zpoint(zgrid, pdfs, zpoint)
    return _figure_binned(mag, zp, ztrue, bins, mag_label, title)


def figure_metrics_vs_z(
    zgrid: np.ndarray | None, pdfs: Any, ztrue: np.ndarray, bins: int | np.ndarray = 8,
    zpoint: np.ndarray | None = None, by: str = "ztrue", title: str | None = None,
) -> Figure:
    """sigma_NMAD (and sigma_IQR) and the outlier rates in bins of redshift: the true redshift
    (``by="ztrue"``, default) or the point photo-z (``by="zphot"``); default 8 equal-count bins."""
    _, _, zp = _zpoint(zgrid, pdfs, zpoint)
    zt = np.asarray(ztrue, np.float64).reshape(-1)
    if by not in ("ztrue", "zphot"):
        raise ValueError(f"by must be 'ztrue' or 'zphot', got {by!r}")
    x = zt if by == "ztrue" else zp
    label = "$z_{spec}$ (true)" if by == "ztrue" else "$z_{phot}$"
    return _figure_binned(x, zp, zt, bins, label, title)


# the y range of :func:`figure_dz_vs_mag_and_z`; dz/(1 + z) beyond it is drawn at its edges
_DZ_RANGE = (-0.5, 0.5)


def _running_percentiles(
    x: np.ndarray, y: np.ndarray, bins: int | np.ndarray = 10, percentiles=(16.0, 50.0, 84.0), min_count: int = 10,
) -> dict[str, np.ndarray]:
    """Percentiles of ``y`` in bins of ``x`` (pairs where either is not finite are left out).

    Parameters
    ----------
    x, y
        (N,) binning variable and values.
    bins
        Bin edges, or a number of equal-count (quantile) bins, as
        :func:`photovaez.metrics.binned_point_metrics` (the last bin includes its right edge).
    percentiles
        The percentiles (0..100) to compute in each bin.
    min_count
        Bins with fewer points get NaN percentiles.

    Returns
    -------
    dict
        ``edges`` (nb + 1), ``centers``, ``count`` (nb,) and ``percentiles``, an
        (len(percentiles), nb) array.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if np.ndim(bins) == 0:
        edges = np.unique(np.quantile(x, np.linspace(0, 1, int(bins) + 1))) if len(x) else np.array([0.0, 1.0])
    else:
        edges = np.asarray(bins, np.float64)
    if len(edges) < 2:  # a single distinct value
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    nb = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    inside = (x >= edges[0]) & (x <= edges[-1])
    count = np.zeros(nb, np.int64)
    pct = np.full((len(percentiles), nb), np.nan)
    for j in range(nb):
        sel = inside & (idx == j)
        count[j] = int(sel.sum())
        if count[j] >= max(min_count, 1):
            pct[:, j] = np.percentile(y[sel], percentiles)
    return {"edges": edges, "centers": 0.5 * (edges[1:] + edges[:-1]), "count": count, "percentiles": pct}


def figure_dz_vs_mag_and_z(
    zphot: np.ndarray, ztrue: np.ndarray, mag: np.ndarray, mag_label: str = "i", title: str | None = None,
    bins: int | np.ndarray = 10, hist_bins: int = 60, min_count: int = 10,
) -> Figure:
    """dz/(1 + z) = (zphot - ztrue) / (1 + ztrue) against magnitude (left) and true redshift (right).

    Each panel is a 2-D histogram (log colour scale, empty cells blank) over the fixed y range
    [-0.5, 0.5], with dz/(1 + z) clipped to it so that outliers sit in the edge cells; over it,
    the running median (solid) and 16/84 percentiles (dotted) of the unclipped dz/(1 + z) in bins
    of the x quantity, and the ``|dz|/(1 + z) = 0.15`` catastrophic
    lines (dashed).  Galaxies with a non-finite zphot, ztrue or (left panel) magnitude are left out.

    Parameters
    ----------
    zphot, ztrue, mag
        (N,) point photo-z, true redshifts and magnitudes.
    mag_label
        Name of the magnitude, for the left panel's x label.
    title
        Optional title over both panels.
    bins
        Bins of the running percentiles, for each panel: edges, or a number of equal-count bins.
    hist_bins
        Cells of the 2-D histograms along each axis.
    min_count
        Running bins with fewer galaxies are not drawn (NaN).

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 (magnitude) and 1 (true redshift) hold the panels, 2 and 3 their colour bars.
        In each panel ``lines[0]`` is the median, ``lines[1]`` / ``lines[2]`` the 16th / 84th
        percentiles, ``lines[3]`` / ``lines[4]`` the +-0.15 lines.
    """
    from matplotlib.colors import LogNorm

    zp = np.asarray(zphot, np.float64).reshape(-1)
    zt = np.asarray(ztrue, np.float64).reshape(-1)
    m = np.asarray(mag, np.float64).reshape(-1)
    if not (len(zp) == len(zt) == len(m)):
        raise ValueError(f"zphot, ztrue and mag differ in length: {len(zp)}, {len(zt)}, {len(m)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = (zp - zt) / (1.0 + zt)
    lo, hi = _DZ_RANGE
    fig = _new_figure((10.4, 4.4))
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    panels = ((m, f"{mag_label} (magnitude)"), (zt, "$z_{true}$"))
    for ax, (x, xlabel) in zip(axes, panels):
        ok = np.isfinite(x) & np.isfinite(dz)
        xs, ds = x[ok], dz[ok]
        xlim = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
        if xlim[1] <= xlim[0]:
            xlim = (xlim[0] - 0.5, xlim[0] + 0.5)
        h = ax.hist2d(xs, np.clip(ds, lo, hi), bins=hist_bins, range=[xlim, (lo, hi)], cmap="viridis",
                      norm=LogNorm(), cmin=1)
        fig.colorbar(h[3], ax=ax, label="galaxies")
        run = _running_percentiles(xs, ds, bins=bins, min_count=min_count)
        p16, p50, p84 = run["percentiles"]
        c = run["centers"]
        ax.plot(c, p50, "o-", color="C3", ms=3, lw=1.5, label="running median")
        ax.plot(c, p16, ":", color="C3", lw=1.6, label="16/84 percentiles")
        ax.plot(c, p84, ":", color="C3", lw=1.6)
        for s in (1, -1):
            ax.plot(xlim, [s * CATASTROPHIC_EZ] * 2, "--", color="0.2", lw=0.9,
                    label=f"|dz|/(1+z) = {CATASTROPHIC_EZ}" if s > 0 else None)
        n_out = int(np.sum(np.abs(ds) > hi))
        ax.plot([], [], " ", label=f"N = {len(ds)}, {n_out} beyond $\\pm${hi}")
        ax.set_xlim(*xlim)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("$\\Delta z / (1 + z_{true})$")
        ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pca_2d(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of ``v`` (N, D) on their first two principal components (numpy
    SVD of the centred data) and the fraction of the variance each explains.  With D = 1 the
    second coordinate is zero."""
    v = np.asarray(v, np.float64)
    if v.ndim != 2 or len(v) == 0:
        raise ValueError(f"pca_2d needs an (N, D) array with N > 0, got shape {v.shape}")
    c = v - v.mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    proj = c @ vt[:2].T
    var = s**2
    frac = var[:2] / var.sum() if var.sum() > 0 else np.zeros(min(2, len(s)))
    if proj.shape[1] < 2:
        proj = np.concatenate([proj, np.zeros((len(v), 2 - proj.shape[1]))], axis=1)
        frac = np.concatenate([frac, np.zeros(2 - len(frac))])
    return proj, frac


def figure_latent_embeddings(
    model_dict: Any, table: Any, ztrue: np.ndarray | None = None, title: str | None = None,
    max_points: int = 20000, seed: int = 0,
) -> Figure:
    """The means of q(b|x) (left) and of q(a|x,b,z) (right) projected on their first two
    principal components, coloured by redshift: ``ztrue`` when given (also the z of q(a|x,b,z)),
    else the amortised ``zmode`` (:func:`photovaez.api.latents`).  ``model_dict`` may also be a
    :class:`photovaez.api.Predictor`.  At most ``max_points`` galaxies (a random subset) are drawn."""
    from .api import latents

    lat = latents(model_dict, table, z=ztrue)
    zc = lat["z"] if ztrue is None else np.asarray(ztrue, np.float64).reshape(-1)
    n = len(zc)
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    fig = _new_figure((10.0, 4.4))
    sc = None
    for i, (key, label) in enumerate((("b", "auxiliary b: mean of q(b|x)"), ("a", "latent a: mean of q(a|x,b,z)"))):
        proj, frac = pca_2d(lat[key])
        ax = fig.add_subplot(1, 2, i + 1)
        sc = ax.scatter(proj[idx, 0], proj[idx, 1], c=zc[idx], s=4, cmap="plasma", lw=0, alpha=0.8)
        ax.set_xlabel(f"PC1 ({100 * frac[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * frac[1]:.0f}% of variance)")
        ax.set_title(label, fontsize=10)
    fig.colorbar(sc, ax=fig.axes, label="$z_{true}$" if ztrue is not None else "$z_{mode}$ (amortised)")
    if title:
        fig.suptitle(title)
    return fig


def rank_auroc(log_px_clean: np.ndarray, log_px_corrupted: np.ndarray) -> float:
    """AUROC of log p(x) as an outlier score: the probability that a clean galaxy has a higher
    log p(x) than a corrupted one (ties count one half), from the Mann-Whitney rank sum.  NaN
    values are left out; 0.5 = no separation, 1 = every corrupted galaxy scores lower."""
    from scipy.stats import rankdata

    c = np.asarray(log_px_clean, np.float64).reshape(-1)
    k = np.asarray(log_px_corrupted, np.float64).reshape(-1)
    c, k = c[~np.isnan(c)], k[~np.isnan(k)]
    if len(c) == 0 or len(k) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([c, k]))  # ascending, ties get their average rank
    u = ranks[: len(c)].sum() - len(c) * (len(c) + 1) / 2.0
    return float(u / (len(c) * len(k)))


def _symlog(v: np.ndarray, scale: float) -> np.ndarray:
    """``sign(v) log10(1 + |v| / scale)``: linear within ~``scale`` of 0, logarithmic beyond."""
    return np.sign(v) * np.log10(1.0 + np.abs(v) / scale)


def figure_outlier_scores(
    log_px_clean: np.ndarray, log_px_corrupted: np.ndarray, bins: int = 60, title: str | None = None,
    labels: tuple[str, str] = ("clean", "corrupted"),
) -> Figure:
    """Histograms of log p(x) of clean and of corrupted photometry, with the rank AUROC of
    log p(x) as an outlier score (:func:`rank_auroc`) in the legend.

    Corrupted photometry reaches log p(x) of -1000 and below while clean galaxies lie within a few
    tens of their median, so the axis is the distance below the clean median on a symmetric-log
    scale (linear within the clean spread, logarithmic beyond) and each bar is the fraction of
    its sample in the bin: both distributions, their shapes and their overlap are visible.
    """
    from matplotlib.ticker import FixedLocator

    c = np.asarray(log_px_clean, np.float64).reshape(-1)
    k = np.asarray(log_px_corrupted, np.float64).reshape(-1)
    auc = rank_auroc(c, k)
    cf, kf = c[np.isfinite(c)], k[np.isfinite(k)]
    ref = float(np.median(cf)) if len(cf) else 0.0
    q25, q75 = np.percentile(cf, [25, 75]) if len(cf) else (0.0, 1.0)
    scale = max(float(q75 - q25), 1e-3)  # the clean sample's spread sets the linear part
    tc, tk = _symlog(cf - ref, scale), _symlog(kf - ref, scale)
    both = np.concatenate([tc, tk])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = _new_figure((5.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for t, colour, label in ((tc, "C0", labels[0]), (tk, "C3", labels[1])):
        ax.hist(t, bins=edges, weights=np.full(len(t), 1.0 / max(len(t), 1)), histtype="stepfilled", alpha=0.5,
                color=colour, label=f"{label} (N = {len(t)})")
    ax.plot([], [], " ", label=f"AUROC = {auc:.3f}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    nice = np.array([m * 10.0**e for e in range(0, 7) for m in (1, 3)])
    values = np.concatenate([-nice[::-1], [0.0], nice])
    values = values[(np.abs(values) >= scale) | (values == 0)]
    ticks = _symlog(values, scale)
    inside = (ticks >= lo) & (ticks <= hi)
    values, ticks = values[inside], ticks[inside]
    if len(ticks) > 9:  # keep the powers of ten
        keep = (values == 0) | np.isclose(np.log10(np.abs(np.where(values == 0, 1, values))) % 1, 0)
        values, ticks = values[keep], ticks[keep]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.set_xlabel(f"log p(x) - {ref:.1f} (clean median; symmetric-log axis, linear within {scale:.2g})")
    ax.set_ylabel("fraction of galaxies per bin")
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, ax, title)


# ------------------------------------------------------------------------------------------------
# files


def plot_zphot_zspec(zgrid, pdfs, ztrue, path, zpoint=None, **kw) -> str:
    """Write :func:`figure_zphot_zspec` to ``path`` (PNG); returns the path."""
    return save(figure_zphot_zspec(zgrid, pdfs, ztrue, zpoint=zpoint, **kw), path)


def plot_pit_hist(zgrid, pdfs, ztrue, path, **kw) -> str:
    """Write :func:`figure_pit_hist` to ``path`` (PNG); returns the path."""
    return save(figure_pit_hist(zgrid, pdfs, ztrue, **kw), path)


def plot_pit_qq(zgrid, pdfs, ztrue, path, **kw) -> str:
    """Write :func:`figure_pit_qq` to ``path`` (PNG); returns the path."""
    return save(figure_pit_qq(zgrid, pdfs, ztrue, **kw), path)


def plot_nz(zgrid, pdfs, ztrue, path, **kw) -> str:
    """Write :func:`figure_nz` to ``path`` (PNG); returns the path."""
    return save(figure_nz(zgrid, pdfs, ztrue, **kw), path)


def plot_metrics_vs_mag(zgrid, pdfs, ztrue, mag, path, **kw) -> str:
    """Write :func:`figure_metrics_vs_mag` to ``path`` (PNG); returns the path."""
    return save(figure_metrics_vs_mag(zgrid, pdfs, ztrue, mag, **kw), path)


def plot_metrics_vs_z(zgrid, pdfs, ztrue, path, **kw) -> str:
    """Write :func:`figure_metrics_vs_z` to ``path`` (PNG); returns the path."""
    return save(figure_metrics_vs_z(zgrid, pdfs, ztrue, **kw), path)


def plot_dz_vs_mag_and_z(zphot, ztrue, mag, path, **kw) -> str:
    """Write :func:`figure_dz_vs_mag_and_z` to ``path`` (PNG); returns the path."""
    return save(figure_dz_vs_mag_and_z(zphot, ztrue, mag, **kw), path)


def plot_latent_embeddings(model_dict, table, path, ztrue=None, **kw) -> str:
    """Write :func:`figure_latent_embeddings` to ``path`` (PNG); returns the path."""
    return save(figure_latent_embeddings(model_dict, table, ztrue=ztrue, **kw), path)


def plot_outlier_scores(log_px_clean, log_px_corrupted, path, **kw) -> str:
    """Write :func:`figure_outlier_scores` to ``path`` (PNG); returns the path."""
    return save(figure_outlier_scores(log_px_clean, log_px_corrupted, **kw), path)
