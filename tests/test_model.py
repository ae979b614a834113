import numpy as np
import pytest
import torch
from scipy import stats

from photovaez.model import SDGM, GaussianMLP, ModelConfig, soft_clamp


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"dim_x": 4, "dim_a": 3, "dim_b": 2, "hidden": [16, 8], "decoder": "mlp", **kw})
    m = SDGM(cfg)
    m.set_redshift_scale(np.log(0.5), 0.6)
    return m


def test_shared_and_per_dimension_variance():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    mu, lv = GaussianMLP(5, 3, [8])(x)
    assert mu.shape == lv.shape == (7, 3)
    assert torch.all(lv == lv[:, :1])
    mu, lv = GaussianMLP(5, 3, [8], per_dim_variance=True)(x)
    assert not torch.allclose(lv[:, 0], lv[:, 1])


def test_soft_clamp_bounds_and_identity_inside():
    v = torch.linspace(-100, 100, 1001)
    c = soft_clamp(v, -9.0, 4.0)
    assert c.min() >= -9.0 - 1e-5 and c.max() <= 4.0 + 1e-5
    mid = torch.tensor([-2.0, 0.0, 1.0])
    torch.testing.assert_close(soft_clamp(mid, -30.0, 30.0), mid, atol=1e-6, rtol=0)


def test_gaussian_log_densities_match_scipy():
    m = small_model()
    x = torch.randn(6, 4)
    q_b = m.q_b_given_x(x)
    b = q_b.sample()
    mu, lv = m.q_b_given_x_net(x)
    ref = stats.norm(mu.detach().numpy(), np.exp(0.5 * lv.detach().numpy())).logpdf(b.numpy()).sum(1)
    np.testing.assert_allclose(q_b.log_prob(b).detach().numpy(), ref, rtol=1e-5)
    a = torch.randn(6, 3)
    z = torch.rand(6) + 0.1
    mu, lv = m.p_x_given_abz_net(a, b, m.z_input(z))
    ref = stats.norm(mu.detach().numpy(), np.exp(0.5 * lv.detach().numpy())).logpdf(x.numpy()).sum(1)
    np.testing.assert_allclose(m.p_x_given_abz(a, b, z).log_prob(x).detach().numpy(), ref, rtol=1e-5)
    ref = stats.norm(0, 1).logpdf(a.numpy()).sum(1)
    np.testing.assert_allclose(m.p_a(a).log_prob(a).numpy(), ref, rtol=1e-5)


def test_lognormal_densities_include_jacobian():
    m = small_model()
    x = torch.randn(5, 4)
    b = torch.randn(5, 2)
    z = torch.tensor([0.05, 0.3, 0.9, 1.7, 2.9])
    q = m.q_z_given_bx(b, x)
    mu, lv = m.q_z_given_bx_net(x, b)
    s = np.exp(0.5 * lv[:, 0].detach().numpy())
    ref = stats.lognorm(s=s, scale=np.exp(mu[:, 0].detach().numpy())).logpdf(z.numpy())
    np.testing.assert_allclose(q.log_prob(z).detach().numpy(), ref, rtol=1e-5)
    # the density integrates to one over z (Jacobian included), brute force
    zz = torch.linspace(1e-4, 40, 400001)
    dens = torch.exp(m.p_z().log_prob(zz)).detach().numpy()
    assert abs(np.trapezoid(dens, zz.numpy()) - 1) < 1e-3
    pz = stats.lognorm(s=np.exp(0.5 * m.prior_log_sigma2_z.item()), scale=np.exp(m.prior_mu_z.item()))
    np.testing.assert_allclose(m.p_z().log_prob(z).detach().numpy(), pz.logpdf(z.numpy()), rtol=1e-5)


def test_prior_initialised_from_redshift_scale_and_trainable():
    m = small_model()
    assert m.prior_mu_z.requires_grad and m.prior_log_sigma2_z.requires_grad
    assert m.prior_mu_z.item() == pytest.approx(np.log(0.5))
    assert np.exp(0.5 * m.prior_log_sigma2_z.item()) == pytest.approx(0.6, rel=1e-5)
    z = torch.tensor([0.5, 0.5 * np.exp(0.6)], dtype=torch.float32)
    torch.testing.assert_close(m.z_input(z)[:, 0], torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)


def test_network_input_sizes():
    m = small_model()
    assert m.q_z_given_bx_net.body[0].in_features == 4 + 2
    assert m.q_a_given_xbz_net.body[0].in_features == 4 + 2 + 1
    assert m.p_b_given_az_net.body[0].in_features == 3 + 1
    assert m.p_x_given_abz_net.body[0].in_features == 3 + 2 + 1
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(activation="swish9")
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"hiden": [3]})


def test_b_samples_and_latent_means_follow_the_encoder_distributions():
    """``b_samples`` reparameterises q(b|x) (mean + std * eps) and ``latent_means`` is the mean of
    q(a|x, b, z) at b = the mean of q(b|x): checked against the torch.distributions objects."""
    m = small_model()
    x, z = torch.randn(5, 4), torch.tensor([0.1, 0.4, 0.8, 1.5, 2.5])
    eps = torch.randn(3, 2)
    q_b = m.q_b_given_x(x)
    torch.testing.assert_close(m.b_samples(x, eps), q_b.mean[None] + q_b.stddev[None] * eps[:, None, :])
    mu_a, mu_b = m.latent_means(x, z)
    torch.testing.assert_close(mu_b, q_b.mean)
    torch.testing.assert_close(mu_a, m.q_a_given_xbz(x, q_b.mean, z).mean)
    # and the networks are wired as the SPEC's graph: q(z|b,x) depends on b, p(x|a,b,z) on z
    b2 = m.b_samples(x, eps)[0]
    assert not torch.allclose(m.q_z_given_bx(b2, x).loc, m.q_z_given_bx(q_b.mean, x).loc)
    a = mu_a
    assert not torch.allclose(m.p_x_given_abz(a, mu_b, z).mean, m.p_x_given_abz(a, mu_b, z + 0.5).mean)


def test_bfloat16_hidden_layers_keep_float32_outputs_and_gradients():
    from photovaez.config import TrainConfig
    from photovaez.train import hidden_precision

    torch.manual_seed(0)
    net = GaussianMLP(5, 3, hidden=[64, 32])
    x = torch.randn(200, 5)
    mu32, lv32 = net(x)
    net.hidden_dtype = torch.bfloat16
    mu16, lv16 = net(x)
    assert mu16.dtype == torch.float32 and lv16.dtype == torch.float32  # the head runs in float32
    assert not torch.equal(mu16, mu32)  # the hidden layers really ran in bfloat16 ...
    torch.testing.assert_close(mu16, mu32, atol=0.02 * mu32.abs().max().item(), rtol=0)  # ... to its precision
    mu16.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    assert hidden_precision("float32", torch.device("cpu")) is None
    assert hidden_precision("bfloat16", torch.device("cpu")) is torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hidden_precision("auto", torch.device("cpu")) is (torch.bfloat16 if native else None)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
