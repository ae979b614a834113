"""photovaez.joint_hmc: NUTS on (log z, a, b) against the exact posterior by quadrature (A = B = 1)."""

import numpy as np
import torch

from photovaez.export import export_params
from photovaez.grid import cdf_on_grid, normalise
from photovaez.joint_hmc import joint_hmc_posterior, log_p_joint
from test_posterior import plain_dict, quadrature_log_joint, random_model, sample_x


def test_joint_hmc_matches_the_quadrature_posterior():
    m = random_model(seed=3, dim_a=1, dim_b=1, scale=0.4)
    with torch.no_grad():
        for net in (m.q_b_given_x_net, m.q_a_given_xbz_net):
            net.head.bias[-1:] = 1.0
    params = export_params(plain_dict(m))
    x = sample_x(m, 3, seed=5)
    zgrid = np.exp(np.linspace(np.log(0.01), np.log(20.0), 400))
    exact = quadrature_log_joint(m, x, zgrid, n=121)
    p_exact, _ = normalise(zgrid, np.exp(exact - exact.max(1, keepdims=True)))
    h = joint_hmc_posterior(params, x, zgrid, n_chains=2, num_warmup=400, num_samples=1500, seed=0)
    assert h.z.shape == (3, 3000) and np.all(h.flag == 0)
    assert np.all(h.divergences == 0), h.divergences
    assert np.all(h.rhat < 1.01), h.rhat
    cdf = cdf_on_grid(zgrid, p_exact)
    # the draws' empirical CDF against the exact z-marginal (no KDE in between)
    for i in range(3):
        zs = np.sort(h.z[i])
        emp = np.arange(1, len(zs) + 1) / len(zs)
        d = np.abs(emp - np.interp(zs, zgrid, cdf[i])).max()
        assert d <= 0.05, (i, d, h.ess[i])
    # the grid PDF (KDE of the draws)
    assert np.abs(cdf_on_grid(zgrid, h.pdf) - cdf).max() <= 0.08


def test_log_p_joint_is_the_sum_of_the_model_terms():
    import jax.numpy as jnp

    m = random_model(seed=1)
    params = export_params(plain_dict(m))
    x = sample_x(m, 1, seed=2)[0]
    rng = np.random.default_rng(0)
    theta = rng.normal(size=1 + m.config.dim_a + m.config.dim_b)
    u, a, b = theta[0], theta[1:3], theta[3:]
    t = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        z = t(np.exp(u))
        ref = (m.log_p_x_given_abz(t(x), t(a), t(b), z) + m.p_b_given_az(t(a), z).log_prob(t(b))
               + m.p_a(t(a)).log_prob(t(a)) + m.p_z().log_prob(z) + u)
    np.testing.assert_allclose(float(log_p_joint(params, jnp.asarray(x, jnp.float32), jnp.asarray(theta, jnp.float32))),
                               float(ref), rtol=1e-5)
