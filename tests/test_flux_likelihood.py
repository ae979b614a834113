"""photovaez.flux_likelihood: the amplitude-marginalised flux likelihood against numerical integration,
its profile against a brute-force maximisation, numpy / torch / JAX agreement and torch gradients,
the magnitude -> flux conversion (non-detections, AB zero point) and the units' Jacobians."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photovaez.features import FeatureSpec, clean_photometry
from photovaez.filters import FilterCurve, load_filter
from photovaez.flux_likelihood import (
    DEFAULT_FLUX_ZEROPOINT,
    ab_flux_unit,
    best_amplitude,
    fluxes_to_magnitudes,
    log_ndtr,
    log_p_flux,
    log_p_flux_profile,
    magnitudes_to_fluxes,
)
from photovaez.synphot import C_ANGSTROM_PER_S, ab_magnitude, redshifted_fluxes
from photovaez.templates import SED

B = 6


def _case(rng, kind):
    """(flux, flux_err, model_flux, intrinsic_frac) of one galaxy, B bands."""
    m = rng.lognormal(0.0, 0.7, B)
    amplitude = rng.uniform(0.5, 20.0)
    err = rng.uniform(0.05, 0.5, B) * amplitude * m.mean()
    eps = 0.0
    if kind == "anti":  # the model anti-correlated with the data: b < 0
        f = -amplitude * m + rng.normal(0, err)
    elif kind == "anti_tiny":  # b / sqrt(a) of order -1e3: log Phi far beyond where Phi underflows
        err = 1e-3 * amplitude * m
        f = -amplitude * m + rng.normal(0, err)
    elif kind == "tiny":
        err = 1e-7 * amplitude * m
        f = amplitude * m + rng.normal(0, err)
    elif kind == "huge":
        err = 1e4 * amplitude * m
        f = amplitude * m + rng.normal(0, err)
    elif kind == "mixed":  # one band with an error of several magnitudes (SDSS u), one non-detection
        err[0] *= 300.0
        f = amplitude * m + rng.normal(0, err)
        f[-1], eps = 0.0, 0.08
    else:
        f = amplitude * m + rng.normal(0, err)
        eps = 0.05 if kind == "intrinsic" else 0.0
    return f, err, m, eps


KINDS = ["plain", "anti", "anti_tiny", "tiny", "huge", "mixed", "intrinsic"]
CASES = [(kind, seed) for kind in KINDS for seed in range(2)]


def _log_like(f, s, m, amplitude):
    """sum_j log N(f_j; A m_j, s_j^2) for an array of amplitudes (scipy.stats.norm)."""
    return stats.norm.logpdf(f, np.multiply.outer(amplitude, m), s).sum(-1)


def _scale(f, s, m):
    """Where the integrand in A lives (textbook a, b: only to place the quadrature's pieces)."""
    a, b = np.sum(m * m / s**2), np.sum(m * f / s**2)
    centre = max(b / a, 0.0)
    width = 1.0 / math.sqrt(a) if b > 0 else min(1.0 / math.sqrt(a), 1.0 / abs(b))
    return centre, width


def _numerical_log_p(f, s, m):
    """log integral_0^inf prod_j norm.pdf(f_j; A m_j, s_j) dA by adaptive quadrature, in pieces.

    The integrand is divided by its value at the centre and A = centre + width u is integrated
    over u, so the pieces are of order 1 and an absolute tolerance is meaningful.
    """
    centre, width = _scale(f, s, m)
    ref = _log_like(f, s, m, np.array([centre]))[0]

    def integrand(u):
        return math.exp(_log_like(f, s, m, np.array([centre + width * u]))[0] - ref)

    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64.0])
    edges = np.unique(np.clip(np.concatenate([-steps, steps]), -centre / width, None))
    total = sum(integrate.quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-9, limit=200)[0]
                for lo, hi in zip(edges[:-1], edges[1:]))
    return math.log(total * width) + ref


@pytest.mark.parametrize("kind,seed", CASES)
def test_marginal_matches_numerical_integration(kind, seed):
    f, err, m, eps = _case(np.random.default_rng(seed), kind)
    s = np.sqrt(err**2 + (eps * f) ** 2)
    got = log_p_flux(f, err, m, eps)
    expected = _numerical_log_p(f, s, m)
    assert abs(got - expected) <= 1e-6 * abs(expected), (kind, got, expected)
    if kind.startswith("anti"):
        assert np.sum(m * f / s**2) < 0


@pytest.mark.parametrize("kind,seed", CASES[::2])
def test_profile_matches_brute_force_maximum(kind, seed):
    f, err, m, eps = _case(np.random.default_rng(seed), kind)
    s = np.sqrt(err**2 + (eps * f) ** 2)
    centre, width = _scale(f, s, m)
    grid = np.linspace(max(centre - 20.0 * width, 0.0), centre + 20.0 * width, 200_001)
    values = _log_like(f, s, m, grid)
    best = values.argmax()
    got = log_p_flux_profile(f, err, m, eps)
    assert values[best] - 1e-12 * abs(values[best]) <= got <= values[best] + 1e-9 * abs(values[best])
    assert abs(best_amplitude(f, err, m, eps) - grid[best]) <= grid[1] - grid[0]
    if kind.startswith("anti"):
        assert best == 0 and best_amplitude(f, err, m, eps) == 0.0


def _batch(seed=0, n=5, samples=3, templates=4):
    """Catalogue-like data (N, 1, 1, B) in nanomaggies against (N, S, T, B) models, some anti-correlated."""
    rng = np.random.default_rng(seed)
    mags = rng.uniform(20.0, 26.0, (n, 1, 1, B))
    f, err = magnitudes_to_fluxes(mags, rng.uniform(0.01, 0.3, mags.shape), np.zeros(mags.shape, bool), 27.0)
    f = f + rng.normal(0.0, err)
    model = f * rng.lognormal(0.0, 0.3, (n, samples, templates, B)) * rng.uniform(0.1, 10.0, (n, samples, 1, 1))
    model[:, 0, 0] = f[:, 0, 0, ::-1] + 0.5 * f.max()  # some poor fits
    return f, err, model, rng.uniform(0.0, 0.1, B)


def _enable_x64(on):
    """JAX's x64 context manager (``jax.enable_x64`` from 0.7, ``jax.experimental.enable_x64`` before)."""
    return jax.enable_x64(on) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64(on)


FUNCTIONS = [log_p_flux, log_p_flux_profile, best_amplitude]


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_numpy_torch_and_jax_agree(fn):
    f, err, model, eps = _batch()
    ref = fn(f, err, model, eps)
    assert ref.shape == model.shape[:-1] and np.all(np.isfinite(ref))
    to64 = partial(torch.as_tensor, dtype=torch.float64)
    got = fn(to64(f), to64(err), to64(model), to64(eps), xp=torch)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    jitted = jax.jit(partial(fn, xp=jnp))
    args32 = [jnp.asarray(v, dtype=jnp.float32) for v in (f, err, model, eps)]
    out32 = jitted(*args32)
    assert out32.dtype == jnp.float32
    # float32: 1e-5 relative, or 1e-5 absolute in log p (1e-5 relative in p) where log p is near 0
    np.testing.assert_allclose(np.asarray(out32), ref, rtol=1e-5, atol=1e-5 if fn is not best_amplitude else 0)
    per_galaxy = jax.vmap(partial(fn, xp=jnp), in_axes=(0, 0, 0, None))(*args32)
    np.testing.assert_allclose(np.asarray(per_galaxy), ref, rtol=1e-5, atol=1e-5 if fn is not best_amplitude else 0)
    with _enable_x64(True):
        out64 = jax.jit(partial(fn, xp=jnp))(*[jnp.asarray(v, dtype=jnp.float64) for v in (f, err, model, eps)])
        assert out64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out64), ref, rtol=1e-12)


@pytest.mark.parametrize("fn", [log_p_flux, log_p_flux_profile])
def test_torch_gradients(fn):
    f, err, model, eps = _batch(seed=1, n=2, samples=2, templates=2)
    f, err = torch.as_tensor(f), torch.as_tensor(err)
    model = torch.tensor(model, requires_grad=True)
    eps = torch.tensor(eps + 0.02, requires_grad=True)
    assert torch.autograd.gradcheck(lambda mf, e: fn(f, err, mf, e, xp=torch), (model, eps))
    fn(f, err, model, eps, xp=torch).sum().backward()
    assert torch.all(torch.isfinite(model.grad)) and torch.all(eps.grad.abs() > 0)


def test_rescaling_model_and_flux_unit():
    f, err, model, eps = _batch(seed=2)
    base, profile = log_p_flux(f, err, model, eps), log_p_flux_profile(f, err, model, eps)
    amplitude = best_amplitude(f, err, model, eps)
    for k in [1e-4, 0.3, 7.0, 1e5]:
        # the amplitude absorbs k; the flat prior's dA gives the Jacobian 1/k
        np.testing.assert_allclose(log_p_flux(f, err, k * model, eps), base - math.log(k), rtol=1e-10)
        np.testing.assert_allclose(log_p_flux_profile(f, err, k * model, eps), profile, rtol=1e-10)
        np.testing.assert_allclose(best_amplitude(f, err, k * model, eps), amplitude / k, rtol=1e-10)
        # a change of the data's flux unit (zero point) by k: B densities and one dA
        np.testing.assert_allclose(log_p_flux(k * f, k * err, model, eps), base - (B - 1) * math.log(k),
                                   rtol=1e-10, atol=1e-9)


def test_magnitudes_to_fluxes_round_trip_and_errors():
    rng = np.random.default_rng(3)
    mags, errs = rng.uniform(14.0, 29.0, (50, B)), rng.uniform(0.001, 3.0, (50, B))
    detected = np.zeros(mags.shape, bool)
    for zp in [DEFAULT_FLUX_ZEROPOINT, 31.4, 0.0]:
        f, sf = magnitudes_to_fluxes(mags, errs, detected, 28.0, zeropoint=zp)
        np.testing.assert_allclose(fluxes_to_magnitudes(f, zeropoint=zp), mags, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sf / f, 0.4 * np.log(10.0) * errs, rtol=1e-13)
    np.testing.assert_allclose(magnitudes_to_fluxes([[22.5, 25.0]], [[0.1, 0.1]], [[False, False]], 28.0)[0],
                               [[1.0, 0.1]], rtol=1e-14)
    assert fluxes_to_magnitudes(0.0) == np.inf and fluxes_to_magnitudes(-1.0) == np.inf


def test_nondetections_are_zero_flux_measurements():
    spec = FeatureSpec()
    table = {name: np.array([24.0, 99.0, np.nan]) for name in spec.bands}
    table.update({name: np.array([0.1, 0.1, 0.1]) for name in spec.err_bands})
    phot = clean_photometry(table, spec)
    limits = [spec.limit(band) for band in spec.bands]
    f, sf = magnitudes_to_fluxes(phot.mags, phot.errs, phot.nondetect, limits)
    assert np.all(f[1:] == 0.0) and np.all(f[0] > 0)
    np.testing.assert_allclose(sf[1:], np.broadcast_to(10 ** (-0.4 * (np.array(limits) - 22.5)) / 5.0, (2, B)),
                               rtol=1e-14)
    f3, sf3 = magnitudes_to_fluxes(phot.mags, phot.errs, phot.nondetect, limits, n_sigma_limit=3.0, zeropoint=30)
    np.testing.assert_allclose(sf3[1:], 10 ** (-0.4 * (np.array(limits) - 30.0)) / 3.0 * np.ones((2, 1)))
    np.testing.assert_allclose(sf3[0], sf[0] * 10 ** (0.4 * 7.5))
    # a model bright where the galaxy is undetected is disfavoured, a faint one is not
    data = np.where(np.arange(B) < B - 1, f[0], 0.0)  # undetected in y
    data_err = np.where(np.arange(B) < B - 1, sf[0], sf[1])
    faint, bright = f[0].copy(), f[0].copy()
    faint[-1], bright[-1] = 0.1 * sf[1, -1], 20.0 * sf[1, -1]
    assert log_p_flux(data, data_err, faint) > log_p_flux(data, data_err, bright) + 100.0
    with pytest.raises(ValueError, match="same shape"):
        magnitudes_to_fluxes(phot.mags, phot.errs[:, :3], phot.nondetect, limits)
    with pytest.raises(ValueError, match="finite"):
        magnitudes_to_fluxes(np.array([[np.nan]]), np.array([[0.1]]), np.array([[False]]), 28.0)


def test_flux_unit_matches_synphot_ab_convention():
    """A flat f_nu template through any band at z = 0 has the magnitude of the converted flux."""
    m0 = 21.3
    f_nu = 10 ** (-0.4 * (m0 + 48.60))
    wavelength = np.geomspace(1000.0, 60000.0, 40_000)
    sed = SED("flat_fnu", wavelength, f_nu * C_ANGSTROM_PER_S / wavelength**2)
    box = FilterCurve("box", np.array([4000.0, 4010.0, 5990.0, 6000.0]), np.array([0.0, 1.0, 1.0, 0.0]))
    curves = [box, load_filter("sdss2010-u"), load_filter("lsst2023-z")]
    synthetic = redshifted_fluxes([sed], curves, np.array([0.0, 0.5])).flux[0, :, 0]  # erg/s/cm^2/Hz
    np.testing.assert_allclose(ab_magnitude(synthetic), m0, atol=1e-6)
    for zp in [DEFAULT_FLUX_ZEROPOINT, 27.0]:
        (flux,), _ = magnitudes_to_fluxes([[m0]], [[0.05]], [[False]], 28.0, zeropoint=zp)
        np.testing.assert_allclose(synthetic / ab_flux_unit(zp), flux[0], rtol=1e-6)
        np.testing.assert_allclose(fluxes_to_magnitudes(synthetic / ab_flux_unit(zp), zp), ab_magnitude(synthetic),
                                   atol=1e-12)
    np.testing.assert_allclose(ab_flux_unit() * 1e23, 3631e-9, rtol=1e-3)  # the nanomaggy, in Jy


def test_log_ndtr_dispatch():
    x = np.array([-40.0, -3.0, 0.0, 4.0])
    ref = log_ndtr(x)
    np.testing.assert_allclose(ref, stats.norm.logcdf(x), rtol=1e-12)
    np.testing.assert_allclose(log_ndtr(torch.as_tensor(x), torch).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(log_ndtr(jnp.asarray(x), jnp)), ref, rtol=1e-6, atol=1e-7)  # float32
    with _enable_x64(True):
        np.testing.assert_allclose(np.asarray(log_ndtr(jnp.asarray(x), jnp)), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="numpy, torch or jax"):
        log_ndtr(x, math)
