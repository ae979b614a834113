"""JAX export and model posterior: parity with PyTorch, brute-force quadrature, HMC vs grid, log p(x)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photovaez import posterior as P
from photovaez.amortised import q_z_given_x_on_grid
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
from photovaez.grid import cdf_on_grid, cell_edges, normalise
from photovaez.model import SDGM, ModelConfig


def random_model(seed=0, scale=0.3, **kw):
    """A small SDGM with randomised weights (CPU, eval mode)."""
    torch.manual_seed(seed)
    cfg = dict(dim_x=4, dim_a=2, dim_b=2, hidden=[16, 16], decoder="mlp")
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

    def t(v):
        return torch.as_tensor(v, dtype=torch.float32)

    def j(v):
        return jnp.asarray(v, jnp.float32)

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
    support = P.support_mask(zgrid, q_z_given_x_on_grid(params, x, zgrid, n_b=32, seed=1), 1e-3)
    part = P.grid_posterior(params, x, zgrid, n_importance=32, seed=1, support=support, max_rows=2000)
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


# --------------------------------------------------------------------------------------------
# kde_on_grid against closed forms


def lognormal_cell_average(m, s, zgrid):
    """Exact cell averages (rows) of the log-normals with log z ~ N(m, s^2) on the grid's cells."""
    edges = cell_edges(zgrid)
    cdf = stats.lognorm.cdf(edges[None, :], np.asarray(s)[:, None], scale=np.exp(np.asarray(m))[:, None])
    return np.diff(cdf, axis=1) / np.diff(edges)[None, :]


def max_rel(a, b):
    """Largest |a - b| of each row relative to the row's peak of b."""
    return np.abs(a - b).max(1) / np.abs(b).max(1)


def test_kde_of_lognormal_samples_is_the_smoothed_lognormal():
    # Stratified draws u_i = m + s Phi^-1((i - 1/2) / S): a sample without Monte-Carlo noise, so
    # the KDE is the log-normal widened by the kernel, sigma^2 = s^2 + h^2, with Silverman's
    # h = 0.9 s S^(-1/5) (sd = s, IQR / 1.34 > s for a normal sample).
    zgrid = np.linspace(0.0, 3.0, 301)
    m, s, S = np.log([0.4, 0.9, 1.6]), np.array([0.15, 0.25, 0.1]), 4000
    u = m[:, None] + s[:, None] * stats.norm.ppf((np.arange(S) + 0.5) / S)[None, :]
    kde = P.kde_on_grid(u, zgrid)
    true = lognormal_cell_average(m, s, zgrid)
    h = 0.9 * s * S ** (-0.2)
    smoothed = lognormal_cell_average(m, np.sqrt(s**2 + h**2), zgrid)
    # the bias is the kernel's widening (1.4 % of the peak here); 0.8 h or 1.25 h is off by >= 0.5 %
    assert np.all(max_rel(kde, true) <= 1.5 * max_rel(smoothed, true))
    assert np.all(max_rel(kde, smoothed) <= 3e-3), max_rel(kde, smoothed)
    # random draws: the CDF within the 99.9 % KS band of S draws plus the kernel's widening
    rng = np.random.default_rng(0)
    S = 5000
    kde = P.kde_on_grid(rng.normal(m[:, None], s[:, None], (3, S)), zgrid)
    edges = cell_edges(zgrid)
    cdf = np.cumsum(kde * np.diff(edges), axis=1)  # at the upper cell edges
    ref = stats.lognorm.cdf(edges[None, 1:], s[:, None], scale=np.exp(m)[:, None])
    t = np.linspace(-5.0, 5.0, 1001)
    widen = np.abs(stats.norm.cdf(t / np.sqrt(1 + (0.9 * S ** -0.2) ** 2)) - stats.norm.cdf(t)).max()
    assert np.all(np.abs(cdf - ref).max(1) <= 1.95 / np.sqrt(S) + widen)


def test_weighted_kde_recovers_the_target_of_importance_weights():
    # stratified draws from a shifted, wider proposal N(m + 0.1, (1.5 s)^2), weighted by
    # target / proposal: the KDE is the target widened by h = 0.9 s n_eff^(-1/5), n_eff the Kish ESS
    zgrid = np.linspace(0.0, 3.0, 301)
    m, s, S = np.log([0.4, 0.9, 1.6]), np.array([0.15, 0.25, 0.1]), 4000
    mp, sp = m + 0.1, 1.5 * s
    u = mp[:, None] + sp[:, None] * stats.norm.ppf((np.arange(S) + 0.5) / S)[None, :]
    w = stats.norm.pdf(u, m[:, None], s[:, None]) / stats.norm.pdf(u, mp[:, None], sp[:, None])
    n_eff = w.sum(1) ** 2 / (w**2).sum(1)
    smoothed = lognormal_cell_average(m, np.sqrt(s**2 + (0.9 * s * n_eff ** (-0.2)) ** 2), zgrid)
    kde = P.kde_on_grid(u, zgrid, weights=10.0 * w)  # any scale: normalised inside
    # 5e-4 of the peak: the bandwidth of S (not n_eff) samples is off by >= 1.3e-3, no weights by 40 %
    assert np.all(max_rel(kde, smoothed) <= 5e-4), max_rel(kde, smoothed)
    assert np.all(max_rel(kde, lognormal_cell_average(m, s, zgrid)) <= 0.03)


def test_kde_with_fixed_bandwidth_is_the_exact_cell_average():
    # a weighted Gaussian mixture in log z: cell masses from the normal CDF at the log cell edges
    # (a log-spaced grid: cells of unequal width)
    rng = np.random.default_rng(1)
    zgrid = np.geomspace(0.05, 3.0, 81)
    G, S = 5, 7
    u = rng.normal(np.log(0.8), 0.5, (G, S))
    w = rng.uniform(0.1, 1.0, (G, S))
    h = rng.uniform(0.02, 0.3, G)
    edges = cell_edges(zgrid)
    with np.errstate(divide="ignore"):
        le = np.log(edges)

    def exact(hh):
        cdf = stats.norm.cdf((le[None, None, :] - u[..., None]) / np.reshape(hh, (-1, 1, 1)))
        mass = np.einsum("gs,gsk->gk", w / w.sum(1, keepdims=True), np.diff(cdf, axis=2))
        return mass / np.diff(edges)[None, :]

    got = P.kde_on_grid(u, zgrid, weights=w, bandwidth=h)
    ref = exact(h)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.max())  # float32 masses

    def density0(z):  # the mixture's density in z, for quadrature over a cell
        return np.sum(w[0] / w[0].sum() * stats.lognorm.pdf(z, h[0], scale=np.exp(u[0])))

    for j in (0, 20, 55):
        mass = integrate.quad(density0, edges[j], edges[j + 1])[0]
        assert got[0, j] * (edges[j + 1] - edges[j]) == pytest.approx(mass, rel=1e-4, abs=1e-7)
    # a scalar bandwidth; one below min_bandwidth is raised to it
    np.testing.assert_allclose(P.kde_on_grid(u, zgrid, weights=w, bandwidth=0.1), exact(np.full(G, 0.1)),
                               rtol=1e-4, atol=1e-5 * ref.max())
    tiny = P.kde_on_grid(u, zgrid, weights=w, bandwidth=1e-5, min_bandwidth=0.05)
    np.testing.assert_allclose(tiny, exact(np.full(G, 0.05)), rtol=1e-4, atol=1e-5 * tiny.max())


def auroc(neg, pos):
    """P(score of a positive > score of a negative) (Mann-Whitney)."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


@pytest.fixture(scope="module", params=["mlp", "sed"])
def trained(dc2_tables, request):
    """A small model of each decoder trained on the DC2 subset (the posterior modes with either)."""
    from photovaez import api

    train, valid = dc2_tables
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network trains faster on one thread of a shared CPU
    try:
        d = api.fit(train, model_config={"hidden": [32, 32], "dim_a": 4, "dim_b": 4, "decoder": request.param},
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
    clean = P.log_px(params, predictor.observations(sub)[0], n_importance=64, seed=0)
    corrupt = P.log_px(params, predictor.observations(bad)[0], n_importance=64, seed=0)
    assert np.all(np.isfinite(clean.log_px)) and np.all(np.isfinite(corrupt.log_px))
    score = auroc(-clean.log_px, -corrupt.log_px)  # outlier score = -log p(x)
    print(f"AUROC {score:.3f}, median Kish ESS {np.median(clean.kish_ess):.1f} of 64")
    assert score >= 0.9, score
    assert np.all(clean.kish_ess >= 1.0) and np.all(clean.kish_ess <= 64.0 + 1e-6)


def _decoder(predictor):
    return predictor.model.config.decoder


@pytest.fixture(scope="module")
def reference(trained):
    """Eight validation galaxies and their grid posterior with N = 256 (the reference p(z|x))."""
    predictor, valid = trained
    sub = {k: np.asarray(v)[:8] for k, v in valid.items()}
    x = predictor.observations(sub)[0]
    zgrid = np.linspace(0.0, 3.0, 151)
    return sub, x, zgrid, P.grid_posterior(predictor.jax_params, x, zgrid, n_importance=256, seed=0)


def test_snis_matches_grid_posterior(trained, reference):
    predictor, _ = trained
    _, x, zgrid, ref = reference
    s = P.snis_posterior(predictor.jax_params, x, zgrid, n_importance=4096, seed=0)
    # the sed model's encoder is a poorer proposal for its own posterior (observed Kish ESS 25-520)
    min_ess = 20 if _decoder(predictor) == "sed" else 100
    assert np.all(s.flag == 0) and np.all((s.kish_ess > min_ess) & (s.kish_ess <= 4096 + 1e-6)), s.kish_ess
    d = np.abs(cdf_on_grid(zgrid, s.pdf) - cdf_on_grid(zgrid, ref.pdf)).max(1)
    # observed max 0.04, mean 0.025 (IS noise at a Kish ESS ~ 10^3 plus the KDE's widening);
    # the unweighted draws (the amortised q(z|x)) are off by 0.08-0.4, mean 0.2
    # sed: observed max 0.18, mean 0.06 at ESS 25-520 (the importance sampling of the sed posterior is
    # the model-posterior work of issue 11); held at 0.25 / 0.1
    tol = (0.25, 0.1) if _decoder(predictor) == "sed" else (0.07, 0.04)
    assert d.max() <= tol[0] and d.mean() <= tol[1], d
    # two estimators of log p(x): SNIS's IWAE from its joint draws, the grid's integral of p(x, z); both
    # are lower bounds in expectation (sed: observed up to 0.47 apart at one galaxy of 8, mlp 0.2)
    np.testing.assert_allclose(s.log_px, ref.log_px_grid, atol=0.6 if _decoder(predictor) == "sed" else 0.3)
    # without the defensive part the draws are log_px's, and so is the estimate
    s0 = P.snis_posterior(predictor.jax_params, x, zgrid, n_importance=4096, seed=0, defensive=0.0, min_ess=0.0)
    np.testing.assert_allclose(s0.log_px, P.log_px(predictor.jax_params, x, n_importance=4096, seed=0).log_px,
                               rtol=1e-6)


@pytest.mark.parametrize("mode", ["grid", "hmc", "snis", "joint"])
def test_estimate_model_posterior_modes(trained, reference, mode):
    from photovaez import api

    predictor, _ = trained
    sub, x, zgrid, ref = reference
    n_samples, settings = {"grid": (32, dict(support_tol=1e-4)),
                           "hmc": (16, dict(num_warmup=100, num_samples=200, max_tree_depth=5)),
                           "snis": (256, dict(calibrate=False)),  # the raw posterior, as the reference
                           "joint": (2, dict(num_warmup=200, num_samples=300))}[mode]
    # the sed model's importance weights are more spread (its encoder a poorer proposal of its own
    # posterior): 4x the samples for the same Monte-Carlo accuracy (with 32, grid's max dCDF was 0.17)
    k = 4 if _decoder(predictor) == "sed" else 1
    n_samples, n_px = (n_samples if mode == "joint" else k * n_samples), k * 32
    pdfs, ancil = api.estimate(predictor, sub, zgrid, mode=mode, n_samples=n_samples, n_log_px=n_px, seed=0,
                               **settings)
    # close to the N = 256 grid posterior (observed max / mean dCDF: grid 0.03 / 0.02, hmc 0.13 / 0.08,
    # snis 0.09 / 0.05; the amortised q(z|x) is off by 0.38 / 0.2)
    d = np.abs(cdf_on_grid(zgrid, pdfs) - cdf_on_grid(zgrid, ref.pdf)).max(1)
    tol = {"grid": (0.1, 0.05), "hmc": (0.2, 0.12), "snis": (0.2, 0.12), "joint": (0.2, 0.12)}[mode]
    if k > 1:  # sed, observed max / mean: grid 0.17 / 0.05 (at 32 samples), snis 0.32 / 0.09
        tol = {"grid": (0.2, 0.08), "hmc": (0.4, 0.15), "snis": (0.4, 0.15), "joint": (0.4, 0.15)}[mode]
    assert d.max() <= tol[0] and d.mean() <= tol[1], d
    # point estimates by their definitions
    np.testing.assert_allclose(ancil["zmean"], integrate.trapezoid(pdfs * zgrid, zgrid, axis=1), rtol=1e-6)
    cdf = integrate.cumulative_trapezoid(pdfs, zgrid, axis=1, initial=0.0)
    at_median = [np.interp(ancil["zmedian"][i], zgrid, cdf[i]) for i in range(len(pdfs))]
    np.testing.assert_allclose(at_median, 0.5, atol=1e-6)
    assert np.all(np.abs(ancil["zmode"] - zgrid[np.argmax(pdfs, axis=1)]) <= 0.5 * (zgrid[1] - zgrid[0]))
    # log p(x): 32-sample IWAE for grid and hmc, the mode's own draws for snis
    n_px = n_samples if mode == "snis" else n_px  # joint: the IWAE pass, as grid and hmc
    lp = P.log_px(predictor.jax_params, x, n_importance=n_px, seed=0)
    if mode == "snis":  # its own draws (the defensive mixture, the extra rounds): checked against the grid below
        assert np.all(ancil["n_draws"] % n_samples == 0) and np.all(ancil["n_draws"] >= n_samples)
        more = ancil["n_draws"] > n_samples  # another round only where the ESS was below snis_min_ess (64)
        assert np.all(ancil["kish_ess"][~more] >= 64) or not np.any(~more), ancil["kish_ess"]
    else:
        np.testing.assert_allclose(ancil["log_px"], lp.log_px, rtol=1e-6)
        np.testing.assert_allclose(ancil["kish_ess"], lp.kish_ess, rtol=1e-5)
    # observed <= 0.4 (mlp, 32 samples); the sed model's hardest galaxy (Kish ESS 2-4 of 128) is 1.7
    # low: the IWAE estimate is a lower bound whose gap grows as the ESS falls
    gap = ancil["log_px"] - ref.log_px_grid
    assert np.all(gap <= 1.0) and np.all(gap >= (-2.5 if k > 1 else -1.0)), gap
    assert np.all(ancil["pdf_flag"] == 0)
    if mode == "hmc":
        assert ancil["divergences"].shape == (len(x),) and ancil["ess"].shape == (len(x),)
    if mode == "joint":  # 2 chains x 300 draws per galaxy
        assert ancil["rhat"].shape == (len(x),) and np.all(ancil["ess"] > 20), ancil["ess"]
    empty, anc0 = api.estimate(predictor, {k: v[:0] for k, v in sub.items()}, zgrid, mode=mode)
    assert empty.shape == (0, len(zgrid)) and anc0["zmode"].shape == (0,)


def test_fitted_proposal_raises_the_ess(trained):
    """api.fit's tempered proposal (photovaez.proposal) against the plain encoder on galaxies it was
    not fitted on: a higher median Kish ESS, and temperatures that only widen."""
    from photovaez.proposal import identity_proposal

    predictor, valid = trained
    rep = predictor.model_dict["report"]["proposal"]
    params = predictor.jax_params
    tau = np.exp(np.concatenate([np.ravel(np.asarray(v)) for v in params["proposal"]]))
    assert np.all(tau >= 1.0 - 1e-6) and np.all(tau <= np.e + 1e-5), tau
    if not rep["kept"]:  # then the model holds the identity
        np.testing.assert_allclose(tau, 1.0)
        pytest.skip(f"the fit did not help this model: {rep}")
    st = params["static"]
    plain = dict(params, proposal=identity_proposal(st.dim_a, st.dim_b, params["logz_mean"].dtype))
    x = predictor.observations({k: np.asarray(v)[200:328] for k, v in valid.items()})[0]
    before = P.log_px(plain, x, n_importance=256, seed=3)
    after = P.log_px(params, x, n_importance=256, seed=3)
    # observed median ESS of 256: mlp 39.5 -> 56.9, sed 12.5 -> 19.7 (the fit reports 59.8 -> 73.0, 14.4 -> 20.0)
    print(rep, np.median(before.kish_ess), np.median(after.kish_ess))
    assert np.median(after.kish_ess) > 1.1 * np.median(before.kish_ess)
    assert rep["ess_after"] > rep["ess_before"] and rep["iw_bound_after"] >= rep["iw_bound_before"]


def test_snis_mode_applies_the_posterior_temperature(trained, reference):
    """api.fit's posterior calibration (on the labelled validation galaxies) is applied by snis."""
    from photovaez import api
    from photovaez.calibration import apply_temperature

    predictor, _ = trained
    sub, _, zgrid, _ = reference
    cal = predictor.model_dict["posterior_calibration"]
    assert cal["mode"] == "snis" and cal["n"] >= 30 and cal["ks_after"] <= cal["ks_before"], cal
    assert predictor.posterior_temperature == cal["temperature"]
    raw, _ = api.estimate(predictor, sub, zgrid, mode="snis", n_samples=128, calibrate=False)
    cooked, _ = api.estimate(predictor, sub, zgrid, mode="snis", n_samples=128)
    np.testing.assert_allclose(cooked, apply_temperature(zgrid, raw, cal["temperature"])[0], rtol=1e-6, atol=1e-12)
