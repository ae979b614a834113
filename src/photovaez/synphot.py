"""Synthetic AB photometry of spectra and of redshifted templates, and the templates' flux tables.

The AB flux density of a spectrum f_lambda(lambda) through a band of photon-counting response
R(lambda) is

    f_nu = integral f_lambda R lambda dlambda / integral R c / lambda dlambda,

with c in Angstrom/s (:data:`C_ANGSTROM_PER_S`): f_lambda in erg/s/cm^2/Angstrom gives f_nu in
erg/s/cm^2/Hz and m_AB = -2.5 log10 f_nu - 48.60 (:func:`ab_magnitude`).  Both curves are
interpolated linearly between their tabulated points; a spectrum is zero outside its tabulated
range and a response outside its own.

A rest-frame template f_rest seen at redshift z has f_lambda(lambda) = f_rest(lambda / (1 + z)) /
(1 + z) (the luminosity distance is left to a free amplitude; no intergalactic absorption is
applied).  Its AB flux is linear in the template's tabulated values, so for a band and a grid of
redshifts it is a matrix (:func:`band_flux_matrix`) applied to them; :func:`redshifted_fluxes`
tabulates every template through every band on a fine redshift grid (:func:`flux_table_grid`,
step 0.005 by default) as a :class:`FluxTable`, which is interpolated linearly in z
(:func:`fluxes_at`) and stored as plain arrays (:meth:`FluxTable.to_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .filters import FilterCurve, filter_support
from .templates import SED

__all__ = ["C_ANGSTROM_PER_S", "AB_ZEROPOINT", "DEFAULT_DZ", "ab_magnitude", "ab_flux", "band_flux_matrix",
           "FluxTable", "flux_table_grid", "redshifted_fluxes", "fluxes_at"]

C_ANGSTROM_PER_S = 2.99792458e18
"""The speed of light in Angstrom per second."""

AB_ZEROPOINT = 48.60
"""m_AB = -2.5 log10(f_nu / (erg/s/cm^2/Hz)) - AB_ZEROPOINT."""

DEFAULT_DZ = 0.005
"""Step of the default flux-table redshift grid.  Linear interpolation in z on it, measured at the
midpoints through the DC2 LSST bands: at most 0.0005 mag for RAIL's 31 COSMOS templates and
0.001 mag for CWWSB4's continuum templates; 0.013 mag for its emission-line starburst SB2 (a line
crossing a filter edge), 0.0034 mag at CWWSB4's 99.9th percentile (``docs/method.md``)."""

_BLOCK = 16  # redshifts per block of band_flux_matrix


def ab_magnitude(f_nu: np.ndarray | float) -> np.ndarray:
    """The AB magnitude of an f_nu in erg/s/cm^2/Hz: -2.5 log10 f_nu - 48.60.

    Parameters
    ----------
    f_nu : array_like
        AB flux densities (> 0; zero gives inf).

    Returns
    -------
    numpy.ndarray
    """
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(np.asarray(f_nu, dtype=np.float64)) - AB_ZEROPOINT


def _check_wavelength(wavelength: np.ndarray, what: str) -> np.ndarray:
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1 or len(wavelength) < 2 or not np.all(np.diff(wavelength) > 0):
        raise ValueError(f"{what}: wavelengths must be a 1-d, strictly increasing array of at least 2 points")
    return wavelength


def _interval_norms(curve: FilterCurve) -> np.ndarray:
    """integral of R c / lambda over each interval of the curve's points (exact for linear R)."""
    w, r = curve.wavelength, curve.response
    h = np.diff(w)
    slope = np.diff(r) / h
    log_ratio = np.log1p(h / w[:-1])
    return C_ANGSTROM_PER_S * (r[:-1] * log_ratio + slope * (h - w[:-1] * log_ratio))


def _linear_weights(x: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval index k and fraction u of x (inside the range) on a strictly increasing grid."""
    k = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    return k, (x - grid[k]) / (grid[k + 1] - grid[k])


def _node_weights(nodes: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Weights w with sum(w * f) = integral f R lambda dlambda for f and R linear between nodes.

    On each interval the integrand is the product of three linear functions, a cubic, so
    Simpson's rule on the interval (the midpoint values being the means of the ends) is exact.
    """
    h = np.diff(nodes)
    r_lambda = response * nodes
    r_lambda_mid = 0.25 * (response[:-1] + response[1:]) * (nodes[:-1] + nodes[1:])
    left = h / 6.0 * (r_lambda[:-1] + 2.0 * r_lambda_mid)
    right = h / 6.0 * (r_lambda[1:] + 2.0 * r_lambda_mid)
    w = np.zeros(len(nodes))
    w[:-1] += left
    w[1:] += right
    return w


def ab_flux(wavelength_obs: np.ndarray, f_lambda_obs: np.ndarray, curve: FilterCurve) -> np.ndarray:
    """The AB flux density f_nu of observed-frame spectra through one band.

    Exact for the linear interpolants of the spectrum and of the response: the integral runs
    over the union of both curves' points inside the band's support and the spectrum's range.

    Parameters
    ----------
    wavelength_obs : numpy.ndarray
        (n,) observed wavelengths in Angstrom, strictly increasing.
    f_lambda_obs : numpy.ndarray
        (..., n) f_lambda at ``wavelength_obs`` (erg/s/cm^2/Angstrom gives f_nu in erg/s/cm^2/Hz);
        zero outside ``wavelength_obs``.
    curve : FilterCurve
        The band.

    Returns
    -------
    numpy.ndarray
        (...) f_nu; 0 where the spectrum does not overlap the band.
    """
    w = _check_wavelength(wavelength_obs, "ab_flux")
    f = np.asarray(f_lambda_obs, dtype=np.float64)
    if f.shape[-1:] != w.shape:
        raise ValueError(f"ab_flux: f_lambda_obs has shape {f.shape}; its last axis must match the "
                         f"{len(w)} wavelengths")
    norm = float(np.sum(_interval_norms(curve)))
    lo, hi = filter_support(curve)
    a, b = max(lo, w[0]), min(hi, w[-1])
    if a >= b:
        return np.zeros(f.shape[:-1])
    cw = curve.wavelength
    nodes = np.union1d(np.union1d(cw[(cw > a) & (cw < b)], w[(w > a) & (w < b)]), [a, b])
    weights = _node_weights(nodes, np.interp(nodes, cw, curve.response))
    k, u = _linear_weights(nodes, w)
    f_nodes = f[..., k] * (1.0 - u) + f[..., k + 1] * u
    return f_nodes @ weights / norm


def _moment_pieces(c, r, slope, y):
    """integral_0^y of R x dx and of R x^2 dx, x = c + y', R = r + slope y' (polynomials in y, no cancellation)."""
    y2, y3 = y * y, y * y * y
    m1 = r * c * y + (r + slope * c) * y2 / 2.0 + slope * y3 / 3.0
    m2 = (r * c * c * y + (2.0 * r * c + slope * c * c) * y2 / 2.0 + (r + 2.0 * slope * c) * y3 / 3.0
          + slope * y2 * y2 / 4.0)
    return m1, m2


def _response_moments(curve: FilterCurve, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """integral_0^x R(l) l dl and integral_0^x R(l) l^2 dl for linear R between the curve's points (exact)."""
    w, resp = curve.wavelength, curve.response
    slope = np.diff(resp) / np.diff(w)
    m1, m2 = _moment_pieces(w[:-1], resp[:-1], slope, np.diff(w))
    cum1, cum2 = np.concatenate([[0.0], np.cumsum(m1)]), np.concatenate([[0.0], np.cumsum(m2)])
    xc = np.clip(x, w[0], w[-1])
    j = np.clip(np.searchsorted(w, xc, side="right") - 1, 0, len(w) - 2)
    p1, p2 = _moment_pieces(w[j], resp[j], slope[j], xc - w[j])
    return cum1[j] + p1, cum2[j] + p2


def band_flux_matrix(rest_wavelength: np.ndarray, curve: FilterCurve, z: np.ndarray) -> np.ndarray:
    """The linear map from a rest-frame SED's tabulated f_lambda to its AB flux in a band at each z.

    ``band_flux_matrix(t, curve, z) @ f_rest`` is the f_nu through ``curve`` of the spectrum that
    interpolates ``f_rest`` linearly on ``t`` (zero outside it) observed at each redshift of ``z``:
    f_lambda(lambda) = f_rest(lambda / (1 + z)) / (1 + z).  The integrals are exact for the
    linear interpolants: on each redshifted interval [a, b] of ``t`` the spectrum is linear, so
    its integral against R lambda is a combination of the response's moments
    integral R lambda dlambda and integral R lambda^2 dlambda over [a, b], which are exact
    polynomials of the piecewise linear R.  No integration grid, nothing to tune.

    Parameters
    ----------
    rest_wavelength : numpy.ndarray
        (n,) rest-frame wavelengths in Angstrom, strictly increasing.
    curve : FilterCurve
        The band.
    z : numpy.ndarray
        (nz,) redshifts, > -1.

    Returns
    -------
    numpy.ndarray
        (nz, n) the matrix.
    """
    t = _check_wavelength(rest_wavelength, "band_flux_matrix")
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    if z.ndim != 1 or np.any(z <= -1) or not np.all(np.isfinite(z)):
        raise ValueError("band_flux_matrix: z must be a 1-d array of finite redshifts > -1")
    scale = 1.0 + z
    lo, hi = filter_support(curve)
    norm = float(np.sum(_interval_norms(curve)))
    matrix = np.zeros((len(z), len(t)))
    for start in range(0, len(z), _BLOCK):  # a few redshifts at a time: each sees a narrow range of t
        rows = slice(start, start + _BLOCK)
        s = scale[rows, None]
        # the rest intervals whose image meets the band's support at one of these redshifts
        seen = np.flatnonzero((t[1:] * s.max() > lo) & (t[:-1] * s.min() < hi))
        if len(seen) == 0:
            continue
        first, last = int(seen[0]), int(seen[-1]) + 1
        edges = t[None, first:last + 1] * s  # observed wavelengths of the template's points
        g1, g2 = _response_moments(curve, edges)
        p, q = np.diff(g1, axis=1), np.diff(g2, axis=1)  # integral R l dl and R l^2 dl per interval
        a, b = edges[:, :-1], edges[:, 1:]
        denom = (b - a) * s * norm
        matrix[rows, first:last] += (b * p - q) / denom  # the weight of the interval's left value
        matrix[rows, first + 1:last + 1] += (q - a * p) / denom  # and of its right value
    return matrix


def _coverage(curve: FilterCurve, t_first: float, t_last: float, z: np.ndarray) -> np.ndarray:
    """Fraction of the band's integral of R / lambda inside [t_first, t_last] * (1 + z)."""
    cumulative = np.concatenate([[0.0], np.cumsum(_interval_norms(curve))])
    total = cumulative[-1]
    inside = (np.interp(t_last * (1.0 + z), curve.wavelength, cumulative)
              - np.interp(t_first * (1.0 + z), curve.wavelength, cumulative))
    return np.clip(inside / total, 0.0, 1.0)


class FluxTable(NamedTuple):
    """AB fluxes of templates through bands on a redshift grid.

    Attributes
    ----------
    z : numpy.ndarray
        (nz,) redshifts, strictly increasing.
    flux : numpy.ndarray
        (n_templates, n_bands, nz) the AB f_nu of each template observed at each redshift
        (template units times erg/s/cm^2/Hz per erg/s/cm^2/Angstrom; distance left to a free
        amplitude).
    templates : list of str
        The templates' names.
    bands : list of str
        The bands' names.
    coverage : numpy.ndarray
        (n_templates, n_bands, nz) the fraction of each band (its integral of R / lambda) that
        the template's tabulated range covers at each redshift; where it is below 1 the template
        was taken as zero over the rest of the band.
    """

    z: np.ndarray
    flux: np.ndarray
    templates: list
    bands: list
    coverage: np.ndarray

    def interpolate(self, z: np.ndarray | float) -> np.ndarray:
        """The table's fluxes at redshifts ``z``, linearly interpolated (:func:`fluxes_at`)."""
        return fluxes_at(self, z)

    def to_dict(self) -> dict[str, Any]:
        """The table as plain data (numpy arrays and lists of str), for a model file."""
        return {"z": np.asarray(self.z), "flux": np.asarray(self.flux), "templates": list(self.templates),
                "bands": list(self.bands), "coverage": np.asarray(self.coverage)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FluxTable:
        """The table from :meth:`to_dict`'s dict, its shapes checked."""
        missing = [k for k in cls._fields if k not in d]
        if missing:
            raise ValueError(f"FluxTable.from_dict: missing keys {missing}")
        table = cls(np.asarray(d["z"], dtype=np.float64), np.asarray(d["flux"], dtype=np.float64),
                    [str(s) for s in d["templates"]], [str(s) for s in d["bands"]],
                    np.asarray(d["coverage"], dtype=np.float64))
        shape = (len(table.templates), len(table.bands), len(table.z))
        if table.z.ndim != 1 or len(table.z) < 2 or not np.all(np.diff(table.z) > 0):
            raise ValueError("FluxTable.from_dict: z must be strictly increasing, at least 2 points")
        if table.flux.shape != shape or table.coverage.shape != shape:
            raise ValueError(f"FluxTable.from_dict: flux {table.flux.shape} and coverage {table.coverage.shape} "
                             f"must have the shape (templates, bands, z) = {shape}")
        return table


def flux_table_grid(zmax: float = 3.0, dz: float = DEFAULT_DZ, zmin: float = 0.0) -> np.ndarray:
    """The default redshift grid of a flux table: ``zmin, zmin + dz, ..., zmax``.

    Parameters
    ----------
    zmax : float
        Its last redshift (default 3, ``TrainConfig.zmax``'s default); rounded up to a whole step.
    dz : float
        The step (default :data:`DEFAULT_DZ`).
    zmin : float
        Its first redshift (default 0).

    Returns
    -------
    numpy.ndarray
    """
    if not (zmax > zmin > -1 and dz > 0):
        raise ValueError(f"flux_table_grid: need -1 < zmin < zmax and dz > 0, got zmin={zmin}, zmax={zmax}, dz={dz}")
    n = math.ceil((zmax - zmin) / dz - 1e-9)
    return zmin + dz * np.arange(n + 1)


def redshifted_fluxes(seds: Sequence[SED], curves: Sequence[FilterCurve], z: np.ndarray | None = None) -> FluxTable:
    """Tabulate the AB flux of every template through every band on a redshift grid.

    Parameters
    ----------
    seds : sequence of SED
        The rest-frame templates.
    curves : sequence of FilterCurve
        The bands.
    z : numpy.ndarray, optional
        (nz,) strictly increasing redshifts (default :func:`flux_table_grid`: 0 to 3 in steps of 0.005).
    Returns
    -------
    FluxTable
        ``flux[t, b, i]`` is the f_nu of ``seds[t]`` at ``z[i]`` through ``curves[b]``.
    """
    z = flux_table_grid() if z is None else np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or len(z) < 2 or not np.all(np.diff(z) > 0):
        raise ValueError("redshifted_fluxes: z must be a strictly increasing 1-d grid of at least 2 redshifts")
    if not seds or not curves:
        raise ValueError("redshifted_fluxes: needs at least one template and one band")
    flux = np.zeros((len(seds), len(curves), len(z)))
    coverage = np.zeros_like(flux)
    groups: dict[bytes, list[int]] = {}  # templates tabulated on the same wavelengths share the matrices
    for i, sed in enumerate(seds):
        groups.setdefault(np.asarray(sed.wavelength, dtype=np.float64).tobytes(), []).append(i)
    for members in groups.values():
        t = np.asarray(seds[members[0]].wavelength, dtype=np.float64)
        f_rest = np.stack([np.asarray(seds[i].flux, dtype=np.float64) for i in members])
        for b, curve in enumerate(curves):
            flux[members, b] = f_rest @ band_flux_matrix(t, curve, z).T
            coverage[members, b] = _coverage(curve, t[0], t[-1], z)
    return FluxTable(z, flux, [s.name for s in seds], [c.name for c in curves], coverage)


def fluxes_at(table: FluxTable, z: np.ndarray | float) -> np.ndarray:
    """A flux table linearly interpolated in redshift.

    Parameters
    ----------
    table : FluxTable
    z : array_like
        (n,) redshifts (or a scalar) inside ``[table.z[0], table.z[-1]]``.

    Returns
    -------
    numpy.ndarray
        (n, n_templates, n_bands) fluxes (a scalar z gives (n_templates, n_bands)).

    Raises
    ------
    ValueError
        A redshift outside the table's range (it is not extrapolated: build the table over the
        redshifts the model needs).
    """
    zq = np.asarray(z, dtype=np.float64)
    grid = table.z
    if zq.size and not (np.all(zq >= grid[0]) and np.all(zq <= grid[-1])):
        bad = zq[~((zq >= grid[0]) & (zq <= grid[-1]))].ravel()[0]
        raise ValueError(f"fluxes_at: redshift {bad} is outside the flux table's range "
                         f"[{grid[0]}, {grid[-1]}]")
    k, u = _linear_weights(zq, grid)
    flux = table.flux[..., k] * (1.0 - u) + table.flux[..., k + 1] * u  # (T, B, *zq.shape)
    return np.moveaxis(flux, (0, 1), (-2, -1))
