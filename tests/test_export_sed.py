"""photovaez.export_sed: the SED decoder's JAX export against the torch decoder (band fluxes and
log p(x | a, b, z), float32 and float64), plain-data storage, jit and vmap."""

import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from photovaez.export_sed import export_sed_decoder, sed_band_fluxes, sed_log_p_x_given_abz, sed_params
from photovaez.filters import load_filters
from photovaez.io import _SafeUnpickler
from photovaez.sed_decoder import RestFrameSEDDecoder, sed_basis
from photovaez.synphot import flux_table_grid
from rail.photovaez.data import rail_resolver

ZGRID = flux_table_grid(3.0, dz=0.05)
BANDS = ("g", "r", "i", "z")


@pytest.fixture(scope="module")
def basis():
    from photovaez.templates import load_templates

    seds = [s for s in load_templates("cwwsb4", rail_resolver) if s.name in ("El_B2004a", "Sbc_B2004a", "Im_B2004a")]
    curves = [c for c in load_filters("lsst", rail_resolver) if c.name.split("_")[-1] in BANDS]
    assert len(curves) == len(BANDS)
    return sed_basis(seds, curves, ZGRID, n_correction=5)


def _decoder(basis, dtype, b_dim=0, zero_points=False, activation="silu"):
    torch.manual_seed(0)
    dec = RestFrameSEDDecoder(basis, a_dim=3, b_dim=b_dim, hidden=(16, 8), activation=activation,
                              zero_points=zero_points, dtype=dtype)
    with torch.no_grad():  # a non-zero correction, zero points and intrinsic error
        for p in dec.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if zero_points:
            dec.zero_point_delta.copy_(0.05 * torch.randn_like(dec.zero_point_delta))
        dec.intrinsic_raw.fill_(-2.0)
    return dec


def _inputs(n_bands, b_dim, seed=1):
    """Random a (and b) at redshifts on the grid's nodes, off it, at and beyond its ends; noisy fluxes."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([ZGRID[[1, 7, 30, -2]], [0.0, ZGRID[-1], -0.1, 3.5],
                        rng.uniform(0.0, ZGRID[-1], 24)])
    n = len(z)
    a = rng.normal(size=(n, 3))
    b = rng.normal(size=(n, b_dim)) if b_dim else None
    flux_err = rng.uniform(0.02, 0.2, (n, n_bands))
    return a, z, b, flux_err, rng


def _compare(dec, dtype_np, b_dim):
    a, z, b, flux_err, rng = _inputs(dec.basis.n_bands, b_dim)
    tt = lambda v: None if v is None else torch.as_tensor(v.astype(dtype_np))  # noqa: E731
    with torch.no_grad():
        m_t = dec.band_fluxes(tt(a), tt(z), tt(b)).numpy()
        flux = (m_t * rng.uniform(0.5, 3.0, (len(z), 1)) + flux_err * rng.normal(size=m_t.shape)).astype(dtype_np)
        lp_t = dec.log_p_x_given_abz(tt(flux), tt(flux_err), tt(a), tt(z), tt(b)).numpy()
    params = sed_params(export_sed_decoder(dec), dtype=dtype_np)
    ja = lambda v: None if v is None else jnp.asarray(v.astype(dtype_np))  # noqa: E731
    m_j = np.asarray(jax.jit(sed_band_fluxes)(params, ja(a), ja(z), ja(b)))
    lp_j = np.asarray(jax.jit(sed_log_p_x_given_abz)(params, ja(flux), ja(flux_err), ja(a), ja(z), ja(b)))
    assert m_j.dtype == lp_j.dtype == dtype_np
    return m_t, m_j, lp_t, lp_j


@pytest.mark.parametrize("b_dim,zero_points,activation", [(0, False, "silu"), (2, True, "gelu")])
def test_float32_matches_torch(basis, b_dim, zero_points, activation):
    m_t, m_j, lp_t, lp_j = _compare(_decoder(basis, torch.float32, b_dim, zero_points, activation), np.float32, b_dim)
    np.testing.assert_allclose(m_j, m_t, rtol=1e-5)
    # log p is O(1) and a sum of terms of either sign, so it can pass near 0: 1e-5 relative plus an
    # atol of 1e-5, ~10x the float32 rounding measured here (1.4e-6 absolute, 6.7e-6 relative at worst)
    np.testing.assert_allclose(lp_j, lp_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b_dim,zero_points,activation", [(0, False, "tanh"), (2, True, "silu")])
def test_float64_matches_torch(basis, b_dim, zero_points, activation):
    with jax.enable_x64(True):
        m_t, m_j, lp_t, lp_j = _compare(_decoder(basis, torch.float64, b_dim, zero_points, activation),
                                        np.float64, b_dim)
    np.testing.assert_allclose(m_j, m_t, rtol=1e-10)
    np.testing.assert_allclose(lp_j, lp_t, rtol=1e-10)


def test_export_is_plain_data(basis):
    exported = export_sed_decoder(_decoder(basis, torch.float32, 2, True))
    back = _SafeUnpickler(io.BytesIO(pickle.dumps(exported))).load()
    assert back["static"] == exported["static"]
    p0, p1 = sed_params(exported), sed_params(back)
    a, z, b = jnp.ones((2, 3)), jnp.array([0.3, 1.2]), jnp.zeros((2, 2))
    f = jax.jit(sed_band_fluxes)
    np.testing.assert_array_equal(np.asarray(f(p1, a, z, b)), np.asarray(f(p0, a, z, b)))
    off = export_sed_decoder(_decoder(basis, torch.float32))
    assert off["zero_point_delta"] is None and off["static"]["b_dim"] == 0


def test_jit_vmap_and_gradient(basis):
    """vmap against jit (which the comparisons with torch use); a finite gradient in z."""
    params = sed_params(export_sed_decoder(_decoder(basis, torch.float32, 2, True)))
    a, z, b, flux_err, _ = _inputs(basis.n_bands, 2)
    a, z, b, flux_err = (jnp.asarray(v[:6], dtype=jnp.float32) for v in (a, z, b, flux_err))
    flux = 2.0 * jax.jit(sed_band_fluxes)(params, a, z, b)
    jitted = jax.jit(sed_log_p_x_given_abz)(params, flux, flux_err, a, z, b)
    vmapped = jax.jit(jax.vmap(sed_log_p_x_given_abz, in_axes=(None, 0, 0, 0, 0, 0)))(params, flux, flux_err, a, z, b)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(jitted), rtol=1e-6, atol=1e-5)
    grad = jax.jit(jax.grad(lambda zz: sed_log_p_x_given_abz(params, flux, flux_err, a, zz, b).sum()))(z)
    assert np.all(np.isfinite(np.asarray(grad)))
