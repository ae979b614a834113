"""photovaez.amortised: the compiled JAX q(z|x) against the torch networks and quadrature of its
log-normal mixture; the antithetic orthogonal b draws."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photovaez.amortised import b_draws, flops_per_galaxy, q_z_given_x_components, q_z_given_x_on_grid
from photovaez.calibration import apply_temperature
from photovaez.export import export_params
from photovaez.grid import cell_edges, redshift_grid
from photovaez.model import SDGM, ModelConfig


def small_model(seed, hidden=(8,), dim_x=3, dim_b=2, scale=0.0):
    torch.manual_seed(seed)
    m = SDGM(ModelConfig(dim_x=dim_x, dim_a=2, dim_b=dim_b, hidden=list(hidden), decoder="mlp")).eval()
    m.set_redshift_scale(np.log(0.7), 0.4)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    params = export_params({"state": {k: v.numpy() for k, v in m.state_dict().items()},
                            "model_config": m.config.to_dict()})
    return m, params


@torch.no_grad()
def torch_components(m, x, eps):
    """(loc, scale) of log z of q(z | b_k, x) from the torch networks, b_k = mu_b + sigma_b eps_k."""
    xt = torch.as_tensor(x)
    b = m.b_samples(xt, torch.as_tensor(eps))
    q = m.q_z_given_bx(b, xt.expand(len(eps), -1, -1))
    return q.loc.T.numpy(), q.scale.T.numpy()


def test_amortised_pdf_is_the_cell_averaged_lognormal_mixture():
    m, params = small_model(1)
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    z = redshift_grid(0.0, 3.0, 61)
    n_b = 5
    got = q_z_given_x_on_grid(params, x, z, n_b=n_b, seed=4)
    loc, scale = torch_components(m, x, b_draws(n_b, 2, 4))
    edges = cell_edges(z)
    for i in range(3):
        comps = [stats.lognorm(s=float(scale[i, k]), scale=float(np.exp(loc[i, k]))) for k in range(n_b)]
        for j in (0, 10, 30, 60):
            mass = np.mean([integrate.quad(c.pdf, edges[j], edges[j + 1])[0] for c in comps])
            assert got[i, j] == pytest.approx(mass / (edges[j + 1] - edges[j]), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("hidden", [(16, 8), ()])
def test_jax_components_match_the_torch_networks(hidden):
    # the x-part of the first layer is computed once for all draws: the same numbers as [x, b_k]
    m, params = small_model(3, hidden=hidden, dim_x=4, dim_b=3, scale=0.3)
    x = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    loc, scale = q_z_given_x_components(params, x, n_b=6, seed=9)
    ref_loc, ref_scale = torch_components(m, x, b_draws(6, 3, 9))
    np.testing.assert_allclose(loc, ref_loc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-5)


def test_temperature_is_applied_as_in_calibration():
    _, params = small_model(5, scale=0.3)
    x = np.random.default_rng(3).normal(size=(7, 3)).astype(np.float32)
    z = redshift_grid(0.0, 3.0, 101)
    raw = q_z_given_x_on_grid(params, x, z, seed=1)
    for t in (0.7, 1.6):
        want, _ = apply_temperature(z, raw, t)
        got = q_z_given_x_on_grid(params, x, z, seed=1, temperature=t)
        got = got / np.trapezoid(got, z, axis=1)[:, None]
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * want.max())


def test_amortised_pdfs_do_not_depend_on_batching():
    _, params = small_model(2)
    x = np.random.default_rng(1).normal(size=(5000, 3)).astype(np.float32)  # > one compiled call
    z = redshift_grid(0.0, 3.0, 31)
    a = q_z_given_x_on_grid(params, x, z)
    b = np.concatenate([q_z_given_x_on_grid(params, x[:20], z), q_z_given_x_on_grid(params, x[20:], z)])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert q_z_given_x_on_grid(params, x[:0], z).shape == (0, 31)


def test_b_draws_are_antithetic_orthogonal_and_standard_normal():
    eps = b_draws(8, 5, seed=0)
    np.testing.assert_allclose(eps[0::2], -eps[1::2])
    d = eps[0::2] / np.linalg.norm(eps[0::2], axis=1, keepdims=True)
    np.testing.assert_allclose(d @ d.T, np.eye(4), atol=1e-6)
    assert b_draws(7, 5, seed=0).shape == (7, 5)
    # marginally N(0, I): one coordinate and the squared length over many seeds
    many = np.stack([b_draws(12, 5, seed=s) for s in range(800)])  # (800, 12, 5)
    first = many[:, 0, :]
    assert stats.kstest(first[:, 2], "norm").pvalue > 1e-3
    assert stats.kstest((first ** 2).sum(1), stats.chi2(5).cdf).pvalue > 1e-3
    np.testing.assert_allclose(np.cov(first.T), np.eye(5), atol=0.15)
    with pytest.raises(ValueError, match="n_b"):
        b_draws(0, 5, seed=0)


def test_antithetic_pairs_give_the_exact_mixture_mean_for_a_linear_network():
    # q(z|b,x) linear in b (no hidden layer): the locations of each pair average to loc(mu_b)
    m, params = small_model(4, hidden=(), dim_x=3, dim_b=4, scale=0.5)
    x = np.random.default_rng(5).normal(size=(30, 3)).astype(np.float32)
    loc, _ = q_z_given_x_components(params, x, n_b=4, seed=2)
    centre, _ = torch_components(m, x, np.zeros((1, 4), np.float32))
    np.testing.assert_allclose(loc.mean(1), centre[:, 0], atol=1e-5)
    mc = torch_components(m, x, np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32))[0]
    assert np.abs(mc.mean(1) - centre[:, 0]).mean() > 100 * np.abs(loc.mean(1) - centre[:, 0]).mean()


def test_flops_per_galaxy_counts_the_network_work():
    import jax

    from photovaez.amortised import _components

    _, params = small_model(6, hidden=(64, 32), dim_x=5, dim_b=4)
    x = np.zeros((256, 5), np.float32)
    eps = b_draws(8, 4, 0)
    cost = jax.jit(_components).lower(params, x, eps).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = flops_per_galaxy(params, 8, 300)["network_flops"]
    # XLA counts the dots (= ours) plus the elementwise work (activations, softplus clamps)
    assert ours <= cost["flops"] / 256 <= 1.6 * ours, (ours, cost["flops"] / 256)


def test_jax_device_names():
    import jax

    from photovaez.amortised import jax_device

    assert jax_device("cpu").platform == "cpu"
    if jax.default_backend() != "gpu":
        assert jax_device("auto").platform == "cpu"
        with pytest.raises(ValueError, match="cuda:0"):
            jax_device("cuda:0")
    with pytest.raises(ValueError, match="tpu"):
        jax_device("tpu")
