import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from photovaez.loss import alpha_weight, batch_loss, labelled_terms, unlabelled_terms
from photovaez.model import SDGM, ModelConfig


def tiny_model():
    torch.manual_seed(3)
    m = SDGM(ModelConfig(dim_x=3, dim_a=2, dim_b=2, hidden=[8], decoder="mlp"))
    m.set_redshift_scale(np.log(0.6), 0.5)
    with torch.no_grad():  # move the prior away from its initial value
        m.prior_mu_z.fill_(-0.3)
        m.prior_log_sigma2_z.fill_(-1.2)
    return m


def _norm_logpdf(v, net_out):
    mu, lv = (t.detach().numpy().astype(np.float64) for t in net_out)
    return stats.norm(mu, np.exp(0.5 * lv)).logpdf(v).sum(-1)


def _np(t):
    return t.detach().numpy().astype(np.float64)


def test_labelled_terms_match_hand_computation():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(4, 3, generator=g), torch.tensor([0.1, 0.4, 1.1, 2.2])
    S = 1
    noise = {"b": torch.randn(S, 4, 2, generator=g), "a": torch.randn(S, 4, 2, generator=g)}
    alpha = 3.5
    t = labelled_terms(m, x, z, alpha, S, noise)
    # by hand: draw b and a with the same noise, evaluate every density with scipy
    mu_b, lv_b = m.q_b_given_x_net(x)
    b = mu_b + torch.exp(0.5 * lv_b) * noise["b"][0]
    zi = m.z_input(z)
    mu_a, lv_a = m.q_a_given_xbz_net(x, b, zi)
    a = mu_a + torch.exp(0.5 * lv_a) * noise["a"][0]
    log_qb = _norm_logpdf(_np(b), (mu_b, lv_b))
    log_qa = _norm_logpdf(_np(a), (mu_a, lv_a))
    log_pb = _norm_logpdf(_np(b), m.p_b_given_az_net(a, zi))
    log_p_x_given_abz = _norm_logpdf(_np(x), m.p_x_given_abz_net(a, b, zi))
    log_pa = stats.norm().logpdf(_np(a)).sum(-1)
    log_pz = stats.lognorm(s=np.exp(0.5 * -1.2), scale=np.exp(-0.3)).logpdf(_np(z))
    mu_z, lv_z = m.q_z_given_bx_net(x, b)
    log_qz = stats.lognorm(s=np.exp(0.5 * _np(lv_z)[:, 0]), scale=np.exp(_np(mu_z)[:, 0])).logpdf(_np(z))
    S_ref = -(log_p_x_given_abz + log_pb + log_pa + log_pz - log_qa - log_qb)
    for name, ref in [("log_qb", log_qb), ("log_qa", log_qa), ("log_pb", log_pb),
                      ("log_p_x_given_abz", log_p_x_given_abz), ("log_pa", log_pa), ("log_pz", log_pz),
                      ("log_qz", log_qz), ("S", S_ref)]:
        np.testing.assert_allclose(_np(t[name]), ref, rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(_np(t["S_tilde"]), S_ref - alpha * log_qz, rtol=1e-4, atol=1e-4)


def test_unlabelled_terms_match_hand_computation():
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g)
    noise = {"b": torch.randn(1, 5, 2, generator=g), "z": torch.randn(1, 5, generator=g),
             "a": torch.randn(1, 5, 2, generator=g)}
    t = unlabelled_terms(m, x, 1, noise)
    mu_b, lv_b = m.q_b_given_x_net(x)
    b = mu_b + torch.exp(0.5 * lv_b) * noise["b"][0]
    mu_z, lv_z = m.q_z_given_bx_net(x, b)
    z = torch.exp(mu_z[:, 0] + torch.exp(0.5 * lv_z[:, 0]) * noise["z"][0])
    zi = m.z_input(z)
    mu_a, lv_a = m.q_a_given_xbz_net(x, b, zi)
    a = mu_a + torch.exp(0.5 * lv_a) * noise["a"][0]
    log_qz = stats.lognorm(s=np.exp(0.5 * _np(lv_z)[:, 0]), scale=np.exp(_np(mu_z)[:, 0])).logpdf(_np(z))
    ref = -(_norm_logpdf(_np(x), m.p_x_given_abz_net(a, b, zi)) + _norm_logpdf(_np(b), m.p_b_given_az_net(a, zi))
            + stats.norm().logpdf(_np(a)).sum(-1)
            + stats.lognorm(s=np.exp(-0.6), scale=np.exp(-0.3)).logpdf(_np(z))
            - _norm_logpdf(_np(a), (mu_a, lv_a)) - log_qz - _norm_logpdf(_np(b), (mu_b, lv_b)))
    np.testing.assert_allclose(_np(t["P"]), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(t["log_qz"]), log_qz, rtol=1e-4, atol=1e-4)


def test_alpha_is_total_over_labelled():
    assert alpha_weight(500, 9725) == pytest.approx(10225 / 500)
    assert alpha_weight(10, 0) == 1.0
    with pytest.raises(ValueError, match="labelled"):
        alpha_weight(0, 10)


def test_batch_loss_is_unbiased_estimate_of_J_over_N():
    """Averaged over every possible batch of size 2, the batch loss equals J / N exactly
    (with the per-galaxy draws fixed), which fails if labelled and unlabelled terms were
    averaged separately or alpha were applied per batch."""
    m = tiny_model()
    g = torch.Generator().manual_seed(2)
    N = 6
    x = torch.randn(N, 3, generator=g)
    z = torch.tensor([0.3, 0.8, 1.0, 1.0, 1.0, 1.0])
    lab = torch.tensor([True, True, False, False, False, False])
    noise = {"b": torch.randn(1, N, 2, generator=g), "a": torch.randn(1, N, 2, generator=g),
             "z": torch.randn(1, N, generator=g)}
    alpha = alpha_weight(2, 4)
    with torch.no_grad():
        full, _ = batch_loss(m, x, z, lab, alpha, 1, noise)
        tl = labelled_terms(m, x[lab], z[lab], alpha, 1, {k: v[:, lab] for k, v in noise.items() if k != "z"})
        tu = unlabelled_terms(m, x[~lab], 1, {k: v[:, ~lab] for k, v in noise.items()})
        J = tl["S_tilde"].sum() + tu["P"].sum()
        assert float(full) == pytest.approx(float(J) / N, rel=1e-5)
        means = []
        for idx in itertools.combinations(range(N), 2):
            idx = torch.tensor(idx)
            nb = {k: v[:, idx] for k, v in noise.items()}
            means.append(float(batch_loss(m, x[idx], z[idx], lab[idx], alpha, 1, nb)[0]))
    assert np.mean(means) == pytest.approx(float(J) / N, rel=1e-5)


def test_batch_loss_reports_every_term_and_backpropagates():
    m = tiny_model()
    x = torch.randn(8, 3)
    z = torch.rand(8) + 0.1
    lab = torch.arange(8) % 2 == 0
    loss, rep = batch_loss(m, x, z, lab, 2.0, n_samples=3)
    loss.backward()
    assert m.prior_mu_z.grad is not None and torch.isfinite(m.prior_mu_z.grad)
    for k in ("log_p_x_given_abz", "log_pb", "log_pa", "log_pz", "log_qa", "log_qb", "log_qz"):
        assert f"labelled/{k}" in rep and f"unlabelled/{k}" in rep
    assert rep["n_labelled"] == 4
