"""The photometric likelihood p(observed fluxes | model fluxes), the amplitude marginalised analytically.

A galaxy's model fluxes m_j (a template's, or the decoder's, AB fluxes through its B bands) are
known up to a free amplitude A >= 0 (the luminosity distance and the galaxy's mass).  Its
observed fluxes f_j have Gaussian errors sigma_j, widened by an intrinsic fractional error
epsilon >= 0 (the templates' own error, learnable)::

    p(f | m) = integral_0^inf p(A) prod_j N(f_j; A m_j, s_j^2) dA,   s_j^2 = sigma_j^2 + (epsilon f_j)^2.

The prior on A is flat (``p(A) = 1`` on A >= 0, improper, as in BPZ).  Because s_j does not depend
on A, the integrand is a Gaussian in A and with a = sum m^2/s^2, b = sum m f/s^2 and
A* = b / a::

    log p = -1/2 sum log(2 pi s^2) - 1/2 sum (f - A* m)^2 / s^2 + 1/2 log(2 pi / a) + log Phi(b / sqrt(a))

(:func:`log_p_flux`; the chi-square at A*, c - b^2/a, is computed as its residual sum, which does not
cancel when the model fits).  Profiling instead of marginalising gives
:func:`log_p_flux_profile` at :func:`best_amplitude` max(A*, 0).

Units.  Fluxes are AB f_nu in units of ``ab_flux_unit(zeropoint)`` = 10^(-0.4 (zeropoint + 48.60))
erg/s/cm^2/Hz, i.e. ``f = 10^(-0.4 (m_AB - zeropoint))``, the convention of
:mod:`photovaez.synphot` (m_AB = -2.5 log10 f_nu - 48.60); the default zero point 22.5 makes the
unit the nanomaggy (3631e-9 Jy).  :func:`magnitudes_to_fluxes` converts a catalogue's cleaned
magnitudes (:class:`photovaez.features.Photometry`), a non-detection becoming a measurement of
zero flux with the error of its depth.  With the flat prior, log p is not invariant under a change
of units: scaling the model fluxes by k > 0 shifts it by -log k (A absorbs k, dA the Jacobian),
and scaling the observed fluxes and errors by k shifts it by -(B - 1) log k.  Model fluxes that
are compared with each other (templates, redshifts) should therefore share one normalisation.

The formula is written once for numpy, torch and jax.numpy (the ``xp`` argument): every operation
is a method or a function of the same name in all three, except log Phi (``log_ndtr``), which
:func:`log_ndtr` dispatches.  In torch it is differentiable in ``model_flux`` and
``intrinsic_frac``; in JAX it can be jitted and vmapped.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .backend import special_function
from .synphot import AB_ZEROPOINT

__all__ = ["DEFAULT_FLUX_ZEROPOINT", "ab_flux_unit", "magnitudes_to_fluxes", "fluxes_to_magnitudes",
           "log_ndtr", "log_p_flux", "log_p_flux_profile", "best_amplitude"]

DEFAULT_FLUX_ZEROPOINT = 22.5
"""The default flux zero point: f = 10^(-0.4 (m_AB - 22.5)), the flux in nanomaggies (3631e-9 Jy)."""

_LOG_2PI = math.log(2.0 * math.pi)


def ab_flux_unit(zeropoint: float = DEFAULT_FLUX_ZEROPOINT) -> float:
    """The flux unit of :func:`magnitudes_to_fluxes` in erg/s/cm^2/Hz: 10^(-0.4 (zeropoint + 48.60)).

    An f_nu from :mod:`photovaez.synphot` (erg/s/cm^2/Hz) divided by it is in the catalogue's flux
    unit: a flux of 1 is the AB magnitude ``zeropoint``.
    """
    return 10.0 ** (-0.4 * (float(zeropoint) + AB_ZEROPOINT))


def magnitudes_to_fluxes(mags: np.ndarray, errs: np.ndarray, nondetect: np.ndarray, limits: Any,
                         n_sigma_limit: float = 5.0,
                         zeropoint: float = DEFAULT_FLUX_ZEROPOINT) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes and their errors as fluxes and flux errors.

    A detection of magnitude m and error sigma_m becomes f = 10^(-0.4 (m - zeropoint)) with
    sigma_f = 0.4 ln(10) f sigma_m (the linearised error).  A non-detection becomes a measurement
    of a small flux, not a limit magnitude: flux 0 with sigma_f = 10^(-0.4 (limit - zeropoint)) /
    n_sigma_limit, the limit being the band's n_sigma_limit-sigma depth.

    Parameters
    ----------
    mags, errs : numpy.ndarray
        (N, B) magnitudes and errors, e.g. :class:`photovaez.features.Photometry`'s ``mags`` and
        ``errs`` (their values at non-detections are ignored).
    nondetect : numpy.ndarray
        (N, B) bool, the non-detections (``Photometry.nondetect``).
    limits : array_like
        The limiting magnitudes, broadcastable to (N, B): e.g. ``[spec.limit(b) for b in spec.bands]``
        of a :class:`photovaez.features.FeatureSpec` (RAIL's DC2 limits are 5-sigma depths).
    n_sigma_limit : float
        The signal-to-noise ratio that defines the limits (default 5).
    zeropoint : float
        The magnitude of unit flux (default 22.5: nanomaggies); :func:`ab_flux_unit` gives the unit.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        (N, B) each.
    """
    mags = np.asarray(mags, dtype=np.float64)
    errs = np.asarray(errs, dtype=np.float64)
    nondetect = np.asarray(nondetect, dtype=bool)
    if not (mags.shape == errs.shape == nondetect.shape):
        raise ValueError(f"magnitudes_to_fluxes: mags {mags.shape}, errs {errs.shape} and nondetect "
                         f"{nondetect.shape} must have the same shape")
    if not n_sigma_limit > 0:
        raise ValueError(f"magnitudes_to_fluxes: n_sigma_limit must be > 0, got {n_sigma_limit}")
    limits = np.broadcast_to(np.asarray(limits, dtype=np.float64), mags.shape)
    detected = ~nondetect
    if not (np.all(np.isfinite(mags[detected])) and np.all(np.isfinite(errs[detected]))
            and np.all(errs[detected] >= 0) and np.all(np.isfinite(limits[nondetect]))):
        raise ValueError("magnitudes_to_fluxes: detected magnitudes and errors must be finite (errors >= 0), "
                         "and so must the limits of non-detections; clean them first (features.clean_photometry)")
    flux = np.where(detected, 10.0 ** (-0.4 * (np.where(detected, mags, zeropoint) - zeropoint)), 0.0)
    limit_flux = 10.0 ** (-0.4 * (np.where(nondetect, limits, zeropoint) - zeropoint))
    flux_err = np.where(detected, 0.4 * math.log(10.0) * flux * np.where(detected, errs, 0.0),
                        limit_flux / n_sigma_limit)
    return flux, flux_err


def fluxes_to_magnitudes(flux: np.ndarray, zeropoint: float = DEFAULT_FLUX_ZEROPOINT) -> np.ndarray:
    """AB magnitudes of fluxes in :func:`magnitudes_to_fluxes`' unit: zeropoint - 2.5 log10 f (inf at f <= 0)."""
    f = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, zeropoint - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.inf)


def log_ndtr(x: Any, xp: ModuleType = np) -> Any:
    """log Phi(x), the log of the standard normal CDF, stable for x << 0, in ``xp``'s library
    (:func:`photovaez.backend.special_function`)."""
    return special_function("log_ndtr", xp)(x)


def _as_array(x: Any, xp: ModuleType) -> Any:
    """``x`` as an array of ``xp`` (unchanged where it already is one, so torch keeps its graph)."""
    if xp.__name__ == "torch":
        return x if isinstance(x, xp.Tensor) else xp.as_tensor(x)
    return xp.asarray(x)


def _moments(flux, flux_err, model_flux, intrinsic_frac, xp):
    """The weights 1/s^2, a = sum m^2/s^2 and b = sum m f/s^2 over the last (band) axis."""
    flux, flux_err, model_flux = (_as_array(v, xp) for v in (flux, flux_err, model_flux))
    if not isinstance(intrinsic_frac, (int, float)):
        intrinsic_frac = _as_array(intrinsic_frac, xp)
    var = flux_err * flux_err + (intrinsic_frac * xp.abs(flux)) ** 2
    w = 1.0 / var
    wm = w * model_flux
    return flux, model_flux, var, w, (wm * model_flux).sum(-1), (wm * flux).sum(-1)


def _gaussian_terms(flux, model_flux, var, w, amplitude, xp):
    """-1/2 sum log(2 pi s^2) - 1/2 sum (f - A m)^2 / s^2 at the amplitude A (...)."""
    r = flux - amplitude[..., None] * model_flux
    return -0.5 * (_LOG_2PI * var.shape[-1] + xp.log(var).sum(-1)) - 0.5 * (w * r * r).sum(-1)


def _clip_positive(x, xp):
    return xp.where(x > 0, x, xp.zeros_like(x))


def log_p_flux(flux: Any, flux_err: Any, model_flux: Any, intrinsic_frac: Any = 0.0, xp: ModuleType = np) -> Any:
    """log p(f | m) = log integral_0^inf prod_j N(f_j; A m_j, s_j^2) dA, flat prior on A >= 0.

    With s_j^2 = sigma_j^2 + (epsilon |f_j|)^2, a = sum m^2/s^2, b = sum m f/s^2, c = sum f^2/s^2::

        log p = -1/2 sum log(2 pi s^2) - 1/2 (c - b^2/a) + 1/2 log(2 pi / a) + log Phi(b / sqrt(a)).

    The intrinsic error is a fraction epsilon of the *observed* flux (as EAZY's template error
    and BPZ's minimum magnitude error act on the data), not of the model flux A m_j: then s_j
    does not depend on A, the integrand is Gaussian in A, and the integral is the closed form
    above; an error proportional to A m_j would make it a non-Gaussian integral with no closed
    form.  A model anti-correlated with the data (b < 0) is handled by log Phi, stably.  The
    prior on A is improper, so see the module's note on units: scaling ``model_flux`` by k > 0
    shifts log p by -log k.

    Parameters
    ----------
    flux, flux_err : array
        (..., B) observed fluxes and their errors (> 0; a non-detection is flux 0 with the error of
        its depth: :func:`magnitudes_to_fluxes`).
    model_flux : array
        (..., B) model fluxes up to the amplitude, not all zero; the leading (batch) axes of the
        three broadcast, e.g. (N, 1, 1, B) data against (N, S, T, B) models (galaxies x samples x
        templates).
    intrinsic_frac : float or array
        epsilon >= 0, a scalar or broadcastable to (..., B) (e.g. one per band); a torch tensor to
        learn it.
    xp : module
        numpy, torch or jax.numpy; the arrays are of its type (numpy arrays are converted).

    Returns
    -------
    array
        (...) log p, in xp's library.
    """
    flux, model_flux, var, w, a, b = _moments(flux, flux_err, model_flux, intrinsic_frac, xp)
    return (_gaussian_terms(flux, model_flux, var, w, b / a, xp) + 0.5 * (_LOG_2PI - xp.log(a))
            + log_ndtr(b / xp.sqrt(a), xp))


def best_amplitude(flux: Any, flux_err: Any, model_flux: Any, intrinsic_frac: Any = 0.0, xp: ModuleType = np) -> Any:
    """The maximum-likelihood amplitude A* = max(b / a, 0) of :func:`log_p_flux`'s model (...).

    The arguments are :func:`log_p_flux`'s.
    """
    _, _, _, _, a, b = _moments(flux, flux_err, model_flux, intrinsic_frac, xp)
    return _clip_positive(b / a, xp)


def log_p_flux_profile(flux: Any, flux_err: Any, model_flux: Any, intrinsic_frac: Any = 0.0,
                       xp: ModuleType = np) -> Any:
    """log max_{A >= 0} prod_j N(f_j; A m_j, s_j^2), the amplitude profiled instead of marginalised.

    At A* = max(b / a, 0) (:func:`best_amplitude`): -1/2 sum log(2 pi s^2) - 1/2 sum (f - A* m)^2 / s^2.
    Unlike :func:`log_p_flux` it is invariant under a rescaling of ``model_flux``.  The arguments
    and the result are :func:`log_p_flux`'s.
    """
    flux, model_flux, var, w, a, b = _moments(flux, flux_err, model_flux, intrinsic_frac, xp)
    return _gaussian_terms(flux, model_flux, var, w, _clip_positive(b / a, xp), xp)
