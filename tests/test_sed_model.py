"""The SDGM with the physics decoder (decoder = "sed") and the bpz prior, wired end to end.

* the full log p(x, z, a, b) - log q of the torch loss against the JAX export's importance weights
  (float64, 1e-5 relative), for the sed and mlp decoders with either prior;
* observation rows: fluxes and m_ref from the catalogue magnitudes;
* a model file with the sed decoder round-trips to identical PDFs, and its JAX posterior runs in a
  process where torch cannot be imported;
* the options reach the model file and the RAIL stages; bad filter settings are named.
"""

import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from photovaez import api
from photovaez import posterior as P
from photovaez.config import ModelConfig
from photovaez.export import export_params, log_p_z
from photovaez.features import FeatureSpec, clean_photometry
from photovaez.filters import FilterCurve
from photovaez.flux_likelihood import magnitudes_to_fluxes
from photovaez.loss import labelled_terms, unlabelled_terms
from photovaez.model import SDGM
from photovaez.observations import decoder_columns, reference_band, split_observation
from photovaez.sed_decoder import sed_basis
from photovaez.templates import SED

BANDS = ["mag_g", "mag_r", "mag_i", "mag_z"]


def toy_basis(n_correction=4):
    """Three smooth synthetic SEDs (a 4000 A break of three strengths) through four box-like bands."""
    lam = np.linspace(900.0, 25000.0, 2000)
    seds = [SED(f"t{k}", lam, (lam / 5000.0) ** slope * np.where(lam < 4000.0, brk, 1.0))
            for k, (slope, brk) in enumerate([(0.5, 0.3), (-0.5, 0.6), (-1.5, 0.9)])]
    curves = []
    for name, centre in zip(BANDS, [4800.0, 6200.0, 7500.0, 8700.0]):
        w = np.linspace(centre - 900.0, centre + 900.0, 181)
        curves.append(FilterCurve(name, w, np.clip(1.0 - ((w - centre) / 700.0) ** 4, 0.0, None)))
    return sed_basis(seds, curves, np.linspace(0.0, 2.5, 126), n_correction=n_correction)


def toy_model(decoder="sed", prior="bpz", dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(dim_x=5, n_bands=4, dim_a=3, dim_b=2, hidden=[16, 16], sed_hidden=[8], decoder=decoder,
                      redshift_prior=prior, reference_band_index=2, **kw)
    m = SDGM(cfg, toy_basis() if decoder == "sed" else None)
    m.set_redshift_scale(math.log(0.6), 0.6)
    m = m.to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def toy_obs(m, n=6, seed=3):
    """Observation rows: random features, positive noisy fluxes with errors, m_ref near 22."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=(n, m.config.dim_x))]
    if m.config.decoder == "sed":
        flux = rng.uniform(0.5, 3.0, (n, 4))
        parts += [flux + rng.normal(0, 0.05, (n, 4)), rng.uniform(0.02, 0.2, (n, 4))]
    if m.config.prior == "bpz":
        parts.append(rng.uniform(20.0, 24.0, (n, 1)))
    return np.concatenate(parts, axis=1)


def plain_dict(m):
    return {"state": {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()},
            "model_config": m.config.to_dict()}


@pytest.mark.parametrize("decoder,prior,kw", [
    ("sed", "bpz", {}),
    ("sed", "bpz", {"sed_uses_b": True, "zero_points": True}),
    ("sed", "lognormal", {"n_correction": 0}),
    ("mlp", "bpz", {}),
])
def test_torch_loss_terms_match_the_jax_log_joint(decoder, prior, kw):
    m = toy_model(decoder, prior, **kw)
    if kw.get("zero_points"):
        with torch.no_grad():
            m.sed_decoder.zero_point_delta.copy_(torch.tensor([0.03, -0.02, 0.0, 0.05], dtype=torch.float64))
    assert m.config.dim_obs == 5 + (8 if decoder == "sed" else 0) + (1 if prior == "bpz" else 0)
    obs = toy_obs(m)
    n, S = len(obs), 7
    rng = np.random.default_rng(5)
    z = rng.uniform(0.1, 2.4, n)
    eps_b, eps_a = rng.normal(size=(S, n, 2)), rng.normal(size=(S, n, 3))
    with torch.no_grad():
        t = labelled_terms(m, torch.as_tensor(obs), torch.as_tensor(z), alpha=2.0, n_samples=S,
                           noise={"b": torch.as_tensor(eps_b), "a": torch.as_tensor(eps_a)})
    with jax.enable_x64(True):
        params = export_params(plain_dict(m), dtype=jnp.float64)
        lw = np.stack([np.asarray(P.log_weights(params, jnp.asarray(obs[i]), jnp.float64(z[i]),
                                                jnp.asarray(eps_b[:, i]), jnp.asarray(eps_a[:, i])))
                       for i in range(n)])
        log_pz = np.asarray(log_p_z(params, jnp.asarray(z), jnp.asarray(obs)))
        # the joint itself: log p(z) + logsumexp of the weights
        lj = P.log_joint(params, jnp.asarray(obs[0]), jnp.float64(z[0]), jnp.asarray(eps_b[:, 0]),
                         jnp.asarray(eps_a[:, 0]))
    # -S is the sample mean of log p(x|a,b,z) + log p(b|a,z) + log p(a) + log p(z) - log q(a) - log q(b)
    np.testing.assert_allclose(lw.mean(axis=1) + log_pz, -t["S"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(log_pz, t["log_pz"].numpy(), rtol=1e-5)
    from scipy.special import logsumexp

    np.testing.assert_allclose(float(lj), log_pz[0] + logsumexp(lw[0]) - math.log(S), rtol=1e-5)
    # the decoder term alone, where the two could disagree most
    with torch.no_grad():
        xs = torch.as_tensor(obs)[None].expand(S, n, -1)
        q_b = m.q_b_given_x(xs)
        b = q_b.mean + q_b.stddev * torch.as_tensor(eps_b)
        zs = torch.as_tensor(z)[None].expand(S, n)
        assert torch.isfinite(m.log_p_x_given_abz(xs, torch.as_tensor(eps_a), b, zs)).all()


def test_unlabelled_terms_run_and_differentiate_through_the_sed_decoder():
    m = toy_model("sed", "bpz", dtype=torch.float32).train()
    obs = torch.as_tensor(toy_obs(m, n=16), dtype=torch.float32)
    t = unlabelled_terms(m, obs, n_samples=3)
    t["P"].mean().backward()
    grads = {k: p.grad for k, p in m.named_parameters()}
    # the unlabelled term reaches the SED network, the intrinsic error, the prior and q(z|b,x)
    for name in ("sed_decoder.net.0.weight", "sed_decoder.intrinsic_raw", "p_z_given_m.z0_raw",
                 "p_z_given_m.km", "q_z_given_bx_net.head.weight"):
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name


def test_observation_rows_hold_fluxes_errors_and_m_ref():
    spec = FeatureSpec(bands=BANDS, err_bands=[f"e_{b}" for b in BANDS], mag_limits={b: 25.0 for b in BANDS})
    table = {"mag_g": np.array([22.0, 99.0]), "mag_r": np.array([21.5, 24.0]), "mag_i": np.array([21.0, np.nan]),
             "mag_z": np.array([20.8, 23.0])}
    table.update({f"e_{b}": np.array([0.05, 0.2]) for b in BANDS})
    phot = clean_photometry(table, spec)
    cfg = ModelConfig(dim_x=spec.dim, n_bands=4, decoder="sed", reference_band_index=2)
    cols = decoder_columns(phot, spec, cfg)
    assert cols.shape == (2, 9) and cfg.n_decoder_columns == 9
    flux, err = magnitudes_to_fluxes(phot.mags, phot.errs, phot.nondetect, [25.0] * 4, n_sigma_limit=5.0)
    np.testing.assert_array_equal(cols[:, :4], flux)
    np.testing.assert_array_equal(cols[:, 4:8], err)
    # 22.5 - 2.5 log10 f: a detection at m = 21 has f = 10^0.6; a non-detection is 0 +- limit flux / 5
    assert cols[0, 2] == pytest.approx(10 ** 0.6) and cols[1, 0] == 0.0
    assert cols[1, 4] == pytest.approx(10 ** (-0.4 * (25.0 - 22.5)) / 5)
    np.testing.assert_array_equal(cols[:, 8], [21.0, 25.0])  # m_ref: the i band (its limit when undetected)
    x, dc = split_observation(np.concatenate([np.zeros((2, spec.dim)), cols], axis=1), cfg)
    assert x.shape == (2, spec.dim) and dc.m_ref.tolist() == [21.0, 25.0]
    assert reference_band(["mag_u_lsst", "mag_i_lsst", "mag_z_lsst"]) == 1
    assert reference_band(["modelMag_r", "modelMag_i", "psfMag_i"]) == 1
    with pytest.raises(ValueError, match="prior_band"):
        reference_band(["g", "r"])
    with pytest.raises(ValueError, match="'mag_q' is not one of the bands"):
        reference_band(BANDS, "mag_q")


@pytest.fixture(scope="module")
def sed_model(dc2_tables):
    from photovaez.config import TrainConfig
    from rail.photovaez.data import rail_resolver

    train, _ = dc2_tables
    mc = {"decoder": "sed", "hidden": [32, 32], "sed_hidden": [16], "n_correction": 4, "zero_points": True}
    # a short proposal fit (it travels through the model file), no posterior calibration (seconds)
    tc = TrainConfig(epochs=3, batch_size=128, progress=False, seed=2, proposal_steps=5, calibrate_posterior=False)
    return api.fit(train, None, model_config=mc, train_config=tc, resolve=rail_resolver)


def test_fit_records_the_sed_settings(sed_model):
    mc = sed_model["model_config"]
    assert mc["decoder"] == "sed" and mc["prior_band"] == "mag_i_lsst" and mc["reference_band_index"] == 3
    assert [f.rsplit("/", 1)[-1] for f in mc["filters"]] == [f"DC2LSST_{b}.res" for b in "ugrizy"]
    basis = sed_model["sed_basis"]
    assert mc["templates"] == "cosmos"  # the default: RAIL's 31 COSMOS templates
    assert np.asarray(basis["flux"]).shape[:2] == (31, 6) and len(basis["log_centres"]) == 4
    rep = sed_model["report"]
    assert rep["intrinsic_error"] > 0 and set(rep["zero_point_offsets_mag"]) == set(FeatureSpec().bands)
    assert rep["bpz_prior"]["z0"] > 0 and "p_z_given_m.km" in sed_model["state"]
    assert "p_x_given_abz_net.head.weight" not in sed_model["state"]


def test_sed_model_file_round_trips_to_identical_pdfs(sed_model, dc2_tables, tmp_path):
    from photovaez.io import load_model, save_model

    _, valid = dc2_tables
    test = {k: v[:40] for k, v in valid.items()}
    zgrid = np.linspace(0.0, 3.0, 301)
    path = tmp_path / "sed.pkl"
    save_model(sed_model, path)
    a, b = api.load_predictor(sed_model), api.load_predictor(load_model(path))
    for mode, kw in (("amortised", {}), ("grid", {"n_samples": 16})):
        pa, aa = api.estimate(a, test, zgrid, mode=mode, **kw)
        pb, ab = api.estimate(b, test, zgrid, mode=mode, **kw)
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(aa["zmode"], ab["zmode"])
    assert np.all(np.isfinite(pa)) and np.allclose(np.trapezoid(pa, zgrid), 1.0)


def test_sed_model_posterior_runs_without_torch(sed_model, dc2_tables, tmp_path):
    from photovaez.io import save_model

    _, valid = dc2_tables
    test = {k: np.asarray(v[:12]) for k, v in valid.items()}
    np.savez(tmp_path / "test.npz", **test)
    save_model(sed_model, tmp_path / "sed.pkl")
    pred = api.load_predictor(sed_model)
    obs, _ = pred.observations(test)
    zgrid = np.linspace(0.0, 3.0, 61)
    ref = P.grid_posterior(pred.jax_params, obs, zgrid, n_importance=8, seed=4).pdf
    np.save(tmp_path / "ref.npy", ref)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from photovaez.config import ModelConfig
        from photovaez.export import export_params, log_p_z
        from photovaez.features import FeatureSpec, Scaler, clean_photometry, features
        from photovaez.io import load_model
        from photovaez.observations import decoder_columns, observation_rows
        from photovaez.posterior import grid_posterior
        d = load_model({str(tmp_path / "sed.pkl")!r})
        spec, scaler = FeatureSpec.from_dict(d["feature_spec"]), Scaler.from_dict(d["scaler"])
        table = dict(np.load({str(tmp_path / "test.npz")!r}))
        phot = clean_photometry(table, spec)
        obs = observation_rows(features(phot, spec, scaler),
                               decoder_columns(phot, spec, ModelConfig.from_dict(d["model_config"])))
        pdf = grid_posterior(export_params(d), obs, np.linspace(0.0, 3.0, 61), n_importance=8, seed=4).pdf
        np.testing.assert_allclose(pdf, np.load({str(tmp_path / "ref.npy")!r}), rtol=1e-6, atol=1e-9)
        assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_bad_filter_settings_are_named(dc2_tables):
    from photovaez.config import TrainConfig
    from rail.photovaez.data import rail_resolver

    train, _ = dc2_tables
    tc = TrainConfig(epochs=1, progress=False)
    with pytest.raises(ValueError, match="6 bands"):
        api.fit(train, None, model_config={"decoder": "sed", "filters": ["sdss2010-r"]}, train_config=tc,
                resolve=rail_resolver)
    spec = FeatureSpec(bands=["mag_g_lsst", "mag_i_lsst"], err_bands=["mag_err_g_lsst", "mag_err_i_lsst"])
    with pytest.raises(ValueError, match="ModelConfig.filters"):
        api.fit(train, None, spec=spec, model_config={"decoder": "sed"}, train_config=tc, resolve=rail_resolver)
    spec = FeatureSpec(bands=["mag_g_lsst", "mag_r_lsst"], err_bands=["mag_err_g_lsst", "mag_err_r_lsst"])
    with pytest.raises(ValueError, match="ModelConfig.prior_band: no band"):
        api.fit(train, None, spec=spec, model_config={"decoder": "sed", "filters": ["lsst2023-g", "lsst2023-r"]},
                train_config=tc, resolve=rail_resolver)
    with pytest.raises(ValueError, match="ModelConfig.decoder"):
        ModelConfig(decoder="template")
    with pytest.raises(ValueError, match="ModelConfig.redshift_prior"):
        ModelConfig(redshift_prior="flat")
