"""photovaez.redshift_prior: BPZ's p(z | m) against quadrature and scipy's generalised gamma,
numpy / torch / JAX agreement, torch gradients, the mean's growth with magnitude and the
maximum-likelihood fit recovering a known prior."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photovaez.redshift_prior import (
    Z_M_MIN,
    BPZPriorParams,
    BPZPriorRaw,
    MagnitudeRedshiftPrior,
    constrain,
    log_p_z_given_m,
    mean_z_given_m,
    softplus,
    softplus_inverse,
    unconstrain,
    z_m_of_m,
)

# (alpha, z0, km, m) including alpha < 1 and alpha > 3; the last is the HDFN E/S0 class at m = 24
CASES = [(0.6, 0.3, 0.1, 23.0), (0.906, 0.0626, 0.123, 21.0), (1.8, 0.5, 0.08, 25.0),
         (3.5, 0.7, 0.05, 19.5), (6.0, 1.2, -0.02, 22.0), (2.465, 0.431, 0.0913, 24.0)]
M0 = 20.0


def _params(alpha, z0, km, alpha_slope=0.0):
    return BPZPriorParams(alpha, z0, km, M0, alpha_slope)


def _gengamma(alpha, zm):
    return stats.gengamma(a=(alpha + 1) / alpha, c=alpha, scale=zm)


@pytest.mark.parametrize("alpha,z0,km,m", CASES)
def test_normalised_over_z(alpha, z0, km, m):
    params = _params(alpha, z0, km)
    zm = float(z_m_of_m(m, params))
    assert zm == pytest.approx(z0 + km * (m - M0), rel=1e-13)  # the floor does not act here

    def density(z):
        return math.exp(log_p_z_given_m(z, m, params))

    # split at z_m, where the mass is, so quad sees the peak (and alpha < 1's z = 0 spike)
    total = sum(integrate.quad(density, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
                for a, b in [(0.0, zm), (zm, 20 * zm), (20 * zm, np.inf)])
    assert abs(total - 1.0) < 1e-8


@pytest.mark.parametrize("alpha,z0,km,m", CASES)
def test_equals_scipy_gengamma(alpha, z0, km, m):
    params = _params(alpha, z0, km)
    zm = z0 + km * (m - M0)
    z = zm * np.geomspace(1e-3, 5.0, 200)
    np.testing.assert_allclose(log_p_z_given_m(z, m, params), _gengamma(alpha, zm).logpdf(z), rtol=0, atol=1e-10)
    assert float(mean_z_given_m(m, params)) == pytest.approx(_gengamma(alpha, zm).mean(), rel=1e-12)


def _backend_inputs(rng):
    z = rng.uniform(0.01, 3.0, 50)
    m = rng.uniform(18.0, 26.0, 50)
    params = _params(1.7, 0.45, 0.09, alpha_slope=0.03)
    return z, m, params, log_p_z_given_m(z, m, params)


def test_torch_and_jax_agree_with_numpy():
    z, m, params, ref = _backend_inputs(np.random.default_rng(3))
    params_t = BPZPriorParams(*(torch.tensor(v, dtype=torch.float64) for v in params))
    t64 = log_p_z_given_m(torch.tensor(z), torch.tensor(m), params_t, torch)
    np.testing.assert_allclose(t64.numpy(), ref, rtol=1e-12, atol=1e-12)
    z32, m32 = np.float32(z), np.float32(m)
    j32 = log_p_z_given_m(jnp.asarray(z32), jnp.asarray(m32), params, jnp)
    assert j32.dtype == jnp.float32
    # against float64 at the same (rounded) inputs; log p near 0 is a difference of O(1) terms
    np.testing.assert_allclose(np.asarray(j32), log_p_z_given_m(np.float64(z32), np.float64(m32), params),
                               rtol=1e-6, atol=1e-6)
    with jax.enable_x64(True):
        f = jax.jit(lambda zz, mm: log_p_z_given_m(zz, mm, params, jnp))
        j64 = f(jnp.asarray(z, jnp.float64), jnp.asarray(m, jnp.float64))
        assert j64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(j64), ref, rtol=1e-12, atol=1e-12)


def test_mean_grows_with_magnitude():
    m = np.linspace(M0, 28.0, 41)  # z_m > 0.04 (its straight line) over this range in every case
    for alpha, z0, km, _ in CASES:
        mean = np.asarray(mean_z_given_m(m, _params(alpha, z0, km)))
        assert np.all(np.diff(mean) > 0) if km > 0 else np.all(np.diff(mean) < 0)


def test_constrain_round_trip_and_floor():
    params = _params(0.7, 0.3, -0.05, 0.01)
    back = constrain(unconstrain(params), M0)
    for a, b in zip(back, params):
        assert float(a) == pytest.approx(b, rel=1e-12)
    assert float(softplus(softplus_inverse(2e-3))) == pytest.approx(2e-3, rel=1e-12)
    # z_m stays positive, and log p finite, where the straight line is negative (bright m, km > 0)
    bright = _params(2.0, 0.05, 0.2)
    assert float(z_m_of_m(15.0, bright)) == Z_M_MIN
    assert np.isfinite(log_p_z_given_m(np.array([1e-4, 3.0]), 15.0, bright)).all()
    assert float(z_m_of_m(19.8, bright)) == pytest.approx(0.01, rel=0.01)


def test_gradcheck_in_raw_parameters_and_z():
    rng = np.random.default_rng(5)
    z = torch.tensor(rng.uniform(0.05, 2.5, 7), requires_grad=True)
    m = torch.tensor(rng.uniform(18.0, 25.0, 7))
    start = unconstrain(_params(1.6, 0.4, 0.08, 0.02))
    raw = [torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for v in start]

    def f(zz, *r):
        return log_p_z_given_m(zz, m, constrain(BPZPriorRaw(*r), M0, torch), torch)

    assert torch.autograd.gradcheck(f, (z, *raw), eps=1e-6, atol=1e-7, rtol=1e-6)
    prior = MagnitudeRedshiftPrior(_params(1.6, 0.4, 0.08), fit_alpha_slope=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda zz: prior.log_prob(zz, m), (z,))
    prior.log_prob(z.detach(), m).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in prior.parameters())


@pytest.mark.parametrize("alpha,z0,km,fit_slope", [(2.2, 0.5, 0.1, False), (0.9, 0.35, 0.06, True),
                                                   (3.5, 0.6, 0.04, False)])
def test_init_from_labels_recovers_a_known_prior(alpha, z0, km, fit_slope):
    rng = np.random.default_rng(11)
    m = rng.uniform(19.0, 25.0, 5000)
    truth = BPZPriorParams(alpha, z0, km, 22.0)
    z = _gengamma(alpha, z_m_of_m(m, truth)).rvs(random_state=rng)
    prior = MagnitudeRedshiftPrior(fit_alpha_slope=fit_slope)
    nll = prior.init_from_labels(z, m, m0=22.0)
    fit = prior.params_numpy()
    assert nll <= -np.mean(log_p_z_given_m(z, m, truth)) + 1e-6  # the MLE is at least as likely as the truth
    assert float(fit.alpha) == pytest.approx(alpha, rel=0.05)
    assert float(fit.z0) == pytest.approx(z0, rel=0.05)
    # with alpha's slope free too, km and the slope trade against each other: 10% on km
    assert float(fit.km) == pytest.approx(km, rel=0.1 if fit_slope else 0.05)
    if fit_slope:
        assert abs(float(fit.alpha_slope)) < 0.03
    grid = np.linspace(19.0, 25.0, 13)
    np.testing.assert_allclose(mean_z_given_m(grid, fit), mean_z_given_m(grid, truth), rtol=0.05)
    assert prior.alpha_raw.dtype == torch.float32


def test_init_from_labels_rejects_bad_labels():
    with pytest.raises(ValueError, match="> 0"):
        MagnitudeRedshiftPrior().init_from_labels([0.5, 0.0, 1.0], [20.0, 21.0, 22.0])
