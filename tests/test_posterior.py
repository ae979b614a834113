"""JAX export and model posterior: parity with PyTorch, brute-force quadrature, HMC vs grid, log p(x)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from photovaez import posterior as P
from photovaez.export import (
    export_params,
    log_p_a,
    log_p_z,
    log_q_z_given_bx,
    p_b_given_az,
    p_x_given_abz,
    q_a_given_xbz,
    q_b_given_x,
    q_z_given_bx,
)
from photovaez.grid import cdf_on_grid, normalise
from photovaez.model import SDGM, ModelConfig


def random_model(seed=0, scale=0.3, **kw):
    """A small SDGM with randomised weights (CPU, eval mode)."""
    torch.manual_seed(seed)
    cfg = dict(dim_x=4, dim_a=2, dim_b=2, hidden=[16, 16])
    cfg.update(kw)
    m = SDGM(ModelConfig(**cfg))
    m.set_redshift_scale(math.log(0.6), 0.7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m.eval()


def plain_dict(m):
    return {"state": {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()},
            "model_config": m.config.to_dict()}


@torch.no_grad()
def sample_x(m, n, seed=1):
    """Ancestral draws x ~ p(x) from the model (so that the test galaxies are typical)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.exp(m.prior_mu_z + torch.exp(0.5 * m.prior_log_sigma2_z) * torch.randn(n, generator=g))
    a = torch.randn(n, m.config.dim_a, generator=g)
    mu, lv = m.p_b_given_az_net(a, m.z_input(z))
    b = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=g)
    mu, lv = m.p_x_given_abz_net(a, b, m.z_input(z))
    return (mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=g)).numpy()


def close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1.0)  # relative to the array's magnitude
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kw", [{}, {"per_dim_variance": True, "activation": "gelu"}, {"activation": "tanh"}])
def test_jax_matches_torch_networks_and_log_weights(kw):
    m = random_model(**kw)
    params = export_params(plain_dict(m))
    rng = np.random.default_rng(0)
    n, X, A, B = 50, 4, 2, 2
    x, a, b = rng.normal(size=(n, X)), rng.normal(size=(n, A)), rng.normal(size=(n, B))
    z = rng.uniform(0.05, 3.0, size=n)
    t = lambda v: torch.as_tensor(v, dtype=torch.float32)
    j = lambda v: jnp.asarray(v, jnp.float32)
    with torch.no_grad():
        pairs = [
            (m.q_b_given_x_net(t(x)), q_b_given_x(params, j(x))),
            (m.q_z_given_bx_net(t(x), t(b)), q_z_given_bx(params, j(b), j(x))),
            (m.q_a_given_xbz_net(t(x), t(b), m.z_input(t(z))), q_a_given_xbz(params, j(x), j(b), j(z))),
            (m.p_b_given_az_net(t(a), m.z_input(t(z))), p_b_given_az(params, j(a), j(z))),
            (m.p_x_given_abz_net(t(a), t(b), m.z_input(t(z))), p_x_given_abz(params, j(a), j(b), j(z))),
        ]
        for (mu_t, lv_t), (mu_j, lv_j) in pairs:
            assert mu_j.shape == mu_t.shape and lv_j.shape == lv_t.shape
            close(mu_j, mu_t.numpy())
            close(lv_j, lv_t.numpy())
        close(log_p_z(params, j(z)), m.p_z().log_prob(t(z)).numpy())
        close(log_p_a(j(a)), m.p_a(t(a)).log_prob(t(a)).numpy())
        close(log_q_z_given_bx(params, j(z), j(b), j(x)), m.q_z_given_bx(t(b), t(x)).log_prob(t(z)).numpy())

        # the full importance log-weight with the same noise
        N = 32
        eps_b, eps_a = rng.normal(size=(N, B)), rng.normal(size=(N, A))
        for i in range(3):
            xi = t(x[i]).expand(N, X)
            zi = t(np.full(N, z[i]))
            q_b = m.q_b_given_x(xi)
            bb = q_b.mean + q_b.stddev * t(eps_b)
            q_a = m.q_a_given_xbz(xi, bb, zi)
            aa = q_a.mean + q_a.stddev * t(eps_a)
            lw_t = (m.p_x_given_abz(aa, bb, zi).log_prob(xi) + m.p_b_given_az(aa, zi).log_prob(bb)
                    + m.p_a(aa).log_prob(aa) - q_a.log_prob(aa) - q_b.log_prob(bb))
            lw_j = P.log_weights(params, j(x[i]), jnp.float32(z[i]), j(eps_b), j(eps_a))
            close(lw_j, lw_t.numpy())
            lj_t = m.p_z().log_prob(t(z[i])) + torch.logsumexp(lw_t, 0) - math.log(N)
            close(P.log_joint(params, j(x[i]), jnp.float32(z[i]), j(eps_b), j(eps_a)), lj_t.numpy())


@torch.no_grad()
def quadrature_log_joint(m, x, zgrid, n=241):
    """log p(x, z) by 2-D quadrature over (a, b) for a model with A = B = 1 (float64 torch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared CPU
    try:
        return _quadrature(m, x, zgrid, n)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _quadrature(m, x, zgrid, n):
    md = SDGM(m.config).double()
    md.load_state_dict(m.state_dict())
    a = torch.linspace(-7.5, 7.5, n, dtype=torch.float64)
    out = np.empty((len(x), len(zgrid)))
    for j, z in enumerate(zgrid):
        zt = torch.full((n,), float(z), dtype=torch.float64)
        mu_b, lv_b = md.p_b_given_az_net(a[:, None], md.z_input(zt))
        sd = torch.exp(0.5 * lv_b)
        lo, hi = float((mu_b - 9 * sd).min()), float((mu_b + 9 * sd).max())
        b = torch.linspace(lo, hi, n, dtype=torch.float64)
        A_, B_ = torch.meshgrid(a, b, indexing="ij")
        Z_ = torch.full_like(A_, float(z))
        log_pb = md.p_b_given_az(A_[..., None], Z_).log_prob(B_[..., None])
        log_pa = -0.5 * (math.log(2 * math.pi) + A_**2)
        mu_x, lv_x = md.p_x_given_abz_net(A_[..., None], B_[..., None], md.z_input(Z_))
        log_pz = float(md.p_z().log_prob(torch.tensor(float(z), dtype=torch.float64)))
        cell = float((a[1] - a[0]) * (b[1] - b[0]))
        for i, xi in enumerate(x):
            xt = torch.as_tensor(xi, dtype=torch.float64)
            log_px = -0.5 * (math.log(2 * math.pi) + lv_x + (xt - mu_x) ** 2 * torch.exp(-lv_x)).sum(-1)
            out[i, j] = float(torch.logsumexp((log_px + log_pb + log_pa).flatten(), 0)) + math.log(cell) + log_pz
    return out


def test_grid_posterior_matches_quadrature_and_converges():
    m = random_model(seed=3, dim_a=1, dim_b=1, scale=0.4)
    with torch.no_grad():  # wide encoders (sigma ~ 1.6): a random proposal that covers the posterior
        for net in (m.q_b_given_x_net, m.q_a_given_xbz_net):
            net.head.bias[-1:] = 1.0
    params = export_params(plain_dict(m))
    x = sample_x(m, 3, seed=5)
    zgrid = np.linspace(0.02, 3.0, 60)
    exact = quadrature_log_joint(m, x, zgrid, n=121)
    p_exact, _ = normalise(zgrid, np.exp(exact - exact.max(1, keepdims=True)))
    errors = {}
    for n in (16, 256, 4096):
        g = P.grid_posterior(params, x, zgrid, n_importance=n, seed=0)
        errors[n] = np.mean(np.abs(g.log_joint - exact))
        if n == 4096:
            dcdf = np.abs(cdf_on_grid(zgrid, g.pdf) - cdf_on_grid(zgrid, p_exact)).max()
            assert dcdf <= 0.02, dcdf
            assert np.all(g.flag == 0)
            # log p(x) on the grid = log of the integral of p(x, z)
            ref = np.log(np.trapezoid(np.exp(exact), zgrid, axis=1))
            np.testing.assert_allclose(g.log_px_grid, ref, atol=0.05)
    assert errors[16] > errors[256] > errors[4096], errors
    assert errors[4096] < 0.05, errors


def test_support_restriction_keeps_the_posterior():
    m = random_model(seed=4)
    params = export_params(plain_dict(m))
    x = sample_x(m, 3, seed=2)
    zgrid = np.linspace(0.0, 3.0, 61)  # z = 0 gets density 0
    full = P.grid_posterior(params, x, zgrid, n_importance=32, seed=1)
    part = P.grid_posterior(params, x, zgrid, n_importance=32, seed=1, support_tol=1e-3, max_rows=2000)
    assert np.all(full.pdf[:, 0] == 0) and np.all(full.n_evaluated == 60)
    assert np.all(part.n_evaluated <= 60)
    # the same noise (seed, N) whatever the chunking: identical values where both evaluated
    both = np.isfinite(part.log_joint)
    np.testing.assert_allclose(part.log_joint[both], full.log_joint[both], rtol=1e-5)
    assert np.abs(cdf_on_grid(zgrid, part.pdf) - cdf_on_grid(zgrid, full.pdf)).max() < 0.02


def test_hmc_agrees_with_grid_posterior():
    # A mildly random model whose posteriors are unimodal: one chain per galaxy cannot cross
    # between separated modes (larger random weights, e.g. scale=0.5, give multimodal targets
    # where a chain stays in the mode it starts in).
    m = random_model(seed=6, scale=0.3)
    params = export_params(plain_dict(m))
    x = sample_x(m, 4, seed=3)
    zgrid = np.exp(np.linspace(np.log(1e-3), np.log(60.0), 600))  # wide enough for all the mass
    n_imp = 32
    g = P.grid_posterior(params, x, zgrid, n_importance=n_imp, seed=7)
    h = P.hmc_posterior(params, x, zgrid, n_importance=n_imp, seed=7, num_warmup=300, num_samples=1500,
                        max_tree_depth=6)
    assert h.z.shape == (4, 1500)
    assert np.all(h.divergences == 0), h.divergences
    assert np.all(h.ess > 100), h.ess
    cdf = cdf_on_grid(zgrid, g.pdf)
    pit = np.stack([np.interp(h.z[i], zgrid, cdf[i]) for i in range(4)])
    u = np.sort(pit.ravel())
    ks = np.max(np.maximum(np.arange(1, len(u) + 1) / len(u) - u, u - np.arange(len(u)) / len(u)))
    assert ks <= 0.05, ks
    # the KDE PDF on the grid
    d = np.abs(cdf_on_grid(zgrid, h.pdf) - cdf).max(1)
    assert np.all(d <= 0.08), d


def auroc(neg, pos):
    """P(score of a positive > score of a negative) (Mann-Whitney)."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


@pytest.fixture(scope="module")
def trained(dc2_tables):
    from photovaez import api

    train, valid = dc2_tables
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network trains faster on one thread of a shared CPU
    try:
        d = api.fit(train, model_config={"hidden": [32, 32], "dim_a": 4, "dim_b": 4},
                    train_config={"epochs": 30, "batch_size": 128, "device": "cpu", "progress": False,
                                  "min_epochs": 30, "learning_rate": 3e-3, "seed": 0})
    finally:
        torch.set_num_threads(threads)
    return api.load_predictor(d), valid


def test_log_px_flags_corrupted_photometry(trained):
    predictor, valid = trained
    sub = {k: np.asarray(v)[:150] for k, v in valid.items()}
    bad = dict(sub)
    bad["mag_i_lsst"] = sub["mag_i_lsst"] + 2.0
    params = export_params(predictor.model_dict)
    clean = P.log_px(params, predictor.features(sub)[0], n_importance=64, seed=0)
    corrupt = P.log_px(params, predictor.features(bad)[0], n_importance=64, seed=0)
    assert np.all(np.isfinite(clean.log_px)) and np.all(np.isfinite(corrupt.log_px))
    score = auroc(-clean.log_px, -corrupt.log_px)  # outlier score = -log p(x)
    print(f"AUROC {score:.3f}, median Kish ESS {np.median(clean.kish_ess):.1f} of 64")
    assert score >= 0.9, score
    assert np.all(clean.kish_ess >= 1.0) and np.all(clean.kish_ess <= 64.0 + 1e-6)


@pytest.mark.parametrize("mode", ["grid", "hmc", "snis"])
def test_estimate_posterior_api(trained, mode):
    from photovaez import api

    predictor, valid = trained
    sub = {k: np.asarray(v)[:6] for k, v in valid.items()}
    zgrid = np.linspace(0.0, 3.0, 101)
    settings = {"grid": dict(n_importance=32, support_tol=1e-4),
                "hmc": dict(n_importance=16, num_warmup=100, num_samples=200, max_tree_depth=5),
                "snis": dict(n_importance=256)}[mode]
    pdfs, ancil = api.estimate_posterior(predictor, sub, zgrid, mode=mode, seed=0, n_importance_px=32, **settings)
    assert pdfs.shape == (6, 101)
    np.testing.assert_allclose(np.trapezoid(pdfs, zgrid, axis=1), 1.0, atol=1e-6)
    for k in ("zmode", "zmean", "zmedian", "log_px", "kish_ess", "pdf_flag"):
        assert ancil[k].shape == (6,), k
    assert np.all(np.isfinite(ancil["log_px"]))
    if mode == "hmc":
        assert ancil["divergences"].shape == (6,) and ancil["ess"].shape == (6,)
    empty, anc0 = api.estimate_posterior(predictor, {k: v[:0] for k, v in sub.items()}, zgrid, mode=mode)
    assert empty.shape == (0, 101) and anc0["zmode"].shape == (0,)
