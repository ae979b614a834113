"""Recovery: a catalogue drawn from the sed decoder's own model, labels only for the bright galaxies.

The galaxies are RAIL's CWWSB4 templates (one per galaxy, at random) at redshifts drawn from a
BPZ p(z | m_i), redshifted through RAIL's DC2 LSST filters, with sky-limited LSST-like errors
(5-sigma depths below) and non-detections where the noisy flux is not positive.  Trained with
labels only for i < 22 (which hold few galaxies beyond z = 1), the model's sigma_NMAD on the faint
(i > 23), high-redshift (z > 1) test galaxies must be within 1.5x of the same model trained with
every label: the unlabelled photometry and the physics carry the redshifts the labels do not.
The trained model's default estimate (the amortised q(z|x)) is what is measured.
"""

import numpy as np
import pytest

from photovaez import api
from photovaez.config import TrainConfig
from photovaez.features import FeatureSpec
from photovaez.filters import load_filters
from photovaez.metrics import point_metrics
from photovaez.redshift_prior import BPZPriorParams, log_p_z_given_m
from photovaez.synphot import redshifted_fluxes
from photovaez.templates import load_templates

DEPTHS = [26.5, 27.5, 27.5, 27.0, 26.5, 25.5]  # 5-sigma, u g r i z y (about LSST 10-year)
I_BAND = 3
PRIOR = BPZPriorParams(alpha=2.0, z0=0.45, km=0.15, m0=22.0)
BRIGHT_CUT = 22.0


def draw_catalogue(n, seed, table, spec):
    """A catalogue of ``n`` galaxies drawn from the templates, the prior and the errors."""
    rng = np.random.default_rng(seed)
    m_i = rng.uniform(19.0, 25.0, n)
    zg = table.z[1:]
    logp = log_p_z_given_m(zg[None, :], m_i[:, None], PRIOR)
    cdf = np.cumsum(np.exp(logp - logp.max(axis=1, keepdims=True)), axis=1)
    u = rng.random(n) * cdf[:, -1]
    z = zg[np.array([np.searchsorted(c, v) for c, v in zip(cdf, u)]).clip(0, len(zg) - 1)]
    t = rng.integers(0, table.flux.shape[0], n)
    k = np.clip(np.searchsorted(table.z, z), 0, len(table.z) - 1)
    shape = table.flux[t, :, k]  # (n, 6) fluxes of each galaxy's template at its z
    flux = shape / shape[:, I_BAND:I_BAND + 1] * 10 ** (-0.4 * (m_i[:, None] - 22.5))
    sky = 10 ** (-0.4 * (np.array(DEPTHS) - 22.5)) / 5.0
    sigma = np.sqrt(sky ** 2 + (0.01 * flux) ** 2)
    obs = flux + sigma * rng.normal(size=flux.shape)
    detected = obs > 0
    mags = np.where(detected, 22.5 - 2.5 * np.log10(np.where(detected, obs, 1.0)), 99.0)
    errs = np.where(detected, 1.0857 * sigma / np.where(detected, obs, 1.0), 99.0)
    cat = {b: mags[:, j] for j, b in enumerate(spec.bands)}
    cat.update({e: errs[:, j] for j, e in enumerate(spec.err_bands)})
    cat["redshift"] = z
    return cat


@pytest.fixture(scope="module")
def catalogues():
    from rail.photovaez.data import rail_resolver

    spec = FeatureSpec(mag_limits=dict(zip(FeatureSpec().bands, DEPTHS)))
    table = redshifted_fluxes(load_templates("cwwsb4", rail_resolver), load_filters("lsst", rail_resolver),
                              np.arange(0.0, 3.0001, 0.01))
    return spec, draw_catalogue(4000, 0, table, spec), draw_catalogue(2000, 1, table, spec)


def _train(train, spec, labelled):
    from rail.photovaez.data import rail_resolver

    lab = {k: v[labelled] for k, v in train.items()}
    unl = {k: v[~labelled] for k, v in train.items() if k != "redshift"} if (~labelled).any() else None
    mc = {"decoder": "sed", "templates": "cwwsb4", "hidden": [64, 64], "sed_hidden": [16], "n_correction": 0,
          "dim_a": 4, "dim_b": 4}
    tc = TrainConfig(epochs=60, batch_size=256, learning_rate=3e-3, progress=False, seed=0, patience=10,
                     proposal_steps=0, calibrate_posterior=False)  # (those are tested in test_posterior)
    return api.fit(lab, unl, spec=spec, model_config=mc, train_config=tc, resolve=rail_resolver)


def test_bright_labels_recover_faint_high_z_redshifts(catalogues):
    spec, train, test = catalogues
    i = train[spec.bands[I_BAND]]
    bright = i < BRIGHT_CUT
    assert (train["redshift"][bright] > 1.0).mean() < 0.05  # the labels barely reach z > 1
    zgrid = np.linspace(0.0, 3.0, 301)
    target = (test[spec.bands[I_BAND]] > 23.0) & (test["redshift"] > 1.0)
    assert target.sum() > 200
    sub = {k: v[target] for k, v in test.items()}
    nmad, preds = {}, {}
    for name, labelled in (("bright", bright), ("all", np.ones_like(bright))):
        preds[name] = pred = api.load_predictor(_train(train, spec, labelled))
        _, anc = api.estimate(pred, sub, zgrid)
        nmad[name] = point_metrics(anc["zmode"], sub["redshift"])["sigma_nmad"]
    auto_picks_the_posterior_outside_the_labels(preds, spec, test, sub, zgrid)
    # measured (seed 0): all labels 0.085, bright labels only 0.101 (the 1 < z < 2 "desert" of ugrizy
    # photometry is hard for either: the model posterior (snis) gets 0.054 with all labels)
    assert nmad["all"] < 0.12, nmad  # the fully labelled model does recover them
    assert nmad["bright"] <= 1.5 * nmad["all"], nmad


def auto_picks_the_posterior_outside_the_labels(preds, spec, test, faint, zgrid):
    """The auto mode on the same catalogue: with bright labels only, the faint z > 1 galaxies lie
    outside the labelled support and get the model posterior (auto_reason 3), bright ones keep the
    amortised PDF; with every galaxy labelled the faint ones are inside."""
    from photovaez.estimation import AUTO_REASONS

    i_test = test[spec.bands[I_BAND]]
    bright = {k: v[i_test < BRIGHT_CUT - 0.5] for k, v in test.items()}
    # observed fractions 1.00, 0.96, 0.82 (faint galaxies are sparse among all labels too)
    for name, table, want, at_least in (("bright", faint, 3, 0.9), ("bright", bright, 0, 0.85), ("all", faint, 0, 0.6)):
        pdfs, anc = api.estimate(preds[name], table, zgrid, mode="auto", n_samples=256)
        frac = np.mean(anc["auto_reason"] == want)
        print(name, len(pdfs), AUTO_REASONS[want], frac, np.median(anc["support_score"]))
        assert frac >= at_least, (name, want, frac, np.bincount(anc["auto_reason"], minlength=4))
        np.testing.assert_array_equal(anc["pdf_source"], (anc["auto_reason"] >= 2).astype(np.int8))
        # the posterior ESS is reported exactly where the posterior was computed
        assert np.all(np.isfinite(anc["posterior_ess"]) == (anc["auto_reason"] >= 1))
        # amortised rows are the amortised mode's PDFs, posterior rows the snis mode's
        for mode, rows in (("amortised", anc["pdf_source"] == 0), ("snis", anc["pdf_source"] == 1)):
            if rows.any():
                ref, _ = api.estimate(preds[name], table, zgrid, mode=mode, n_samples=0 if mode == "amortised" else 256)
                np.testing.assert_allclose(pdfs[rows], ref[rows], rtol=1e-5, atol=1e-8)
