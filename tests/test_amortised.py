"""photovaez.amortised: the amortised q(z|x) on the grid against quadrature of its log-normal mixture."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photovaez.amortised import fixed_normal_draws, q_z_given_x_components, q_z_given_x_on_grid
from photovaez.grid import cell_edges, redshift_grid
from photovaez.model import SDGM, ModelConfig


def test_amortised_pdf_is_the_cell_averaged_lognormal_mixture():
    torch.manual_seed(1)
    m = SDGM(ModelConfig(dim_x=3, dim_a=2, dim_b=2, hidden=[8], decoder="mlp")).eval()
    m.set_redshift_scale(np.log(0.7), 0.4)
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    z = redshift_grid(0.0, 3.0, 61)
    n_b = 5
    got = q_z_given_x_on_grid(m, x, z, n_b=n_b, seed=4)
    eps = fixed_normal_draws(n_b, 2, 4)
    edges = cell_edges(z)
    with torch.no_grad():
        xt = torch.as_tensor(x)
        mu_b, lv_b = m.q_b_given_x_net(xt)
        for i in range(3):
            comps = []
            for k in range(n_b):
                b = mu_b[i] + torch.exp(0.5 * lv_b[i]) * eps[k]
                mu, lv = m.q_z_given_bx_net(xt[i : i + 1], b[None])
                comps.append(stats.lognorm(s=float(np.exp(0.5 * lv[0, 0])), scale=float(np.exp(mu[0, 0]))))
            for j in (0, 10, 30, 60):
                mass = np.mean([integrate.quad(c.pdf, edges[j], edges[j + 1])[0] for c in comps])
                assert got[i, j] == pytest.approx(mass / (edges[j + 1] - edges[j]), rel=1e-4, abs=1e-8)


def test_amortised_pdfs_do_not_depend_on_batching():
    torch.manual_seed(2)
    m = SDGM(ModelConfig(dim_x=3, dim_a=2, dim_b=2, hidden=[8], decoder="mlp")).eval()
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    z = redshift_grid(0.0, 3.0, 31)
    a = q_z_given_x_on_grid(m, x, z)
    b = np.concatenate([q_z_given_x_on_grid(m, x[:20], z), q_z_given_x_on_grid(m, x[20:], z)])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    for full, batched in zip(q_z_given_x_components(m, x), q_z_given_x_components(m, x, batch_size=7)):
        np.testing.assert_allclose(batched, full, rtol=1e-5, atol=1e-6)  # float32 rounding
