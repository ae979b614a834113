"""photovaez.plots: each function writes a sensible PNG and its figure has sensible axes."""

import numpy as np
import pytest
from scipy import stats

from photovaez import metrics as M
from photovaez import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZGRID = np.linspace(0.0, 3.0, 301)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    n = 600
    mu = rng.uniform(0.2, 2.5, n)
    sigma = 0.05 * (1 + mu)
    ztrue = np.clip(rng.normal(mu, sigma), 0.01, None)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], sigma[:, None])
    mag = rng.uniform(20, 25, n)
    return pdfs, ztrue, mag, mu


def check_png(path, tmp_path):
    assert str(path).startswith(str(tmp_path))
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == PNG_SIGNATURE
    assert 2_000 < len(data) < 200_000


def test_zphot_zspec(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    fig = P.figure_zphot_zspec(ZGRID, pdfs, ztrue)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 3.0)) and ax.get_ylim() == pytest.approx((0.0, 3.0))
    assert "spec" in ax.get_xlabel() and "phot" in ax.get_ylabel()
    check_png(P.plot_zphot_zspec(ZGRID, pdfs, ztrue, tmp_path / "a" / "zz.png"), tmp_path)


def test_pit_hist_and_qq(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    fig = P.figure_pit_hist(ZGRID, pdfs, ztrue, bins=20)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 1.0))
    assert "PIT" in ax.get_xlabel()
    heights = [p.get_height() for p in ax.patches if hasattr(p, "get_height")][:20]
    assert np.mean(heights) == pytest.approx(1.0, rel=0.05)  # density of ~uniform PIT
    check_png(P.plot_pit_hist(ZGRID, pdfs, ztrue, tmp_path / "pit.png"), tmp_path)

    fig = P.figure_pit_qq(ZGRID, pdfs, ztrue)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 1.0)) and ax.get_ylim() == pytest.approx((0.0, 1.0))
    x, y = ax.lines[1].get_data()  # the PIT quantile curve: close to the diagonal
    assert np.max(np.abs(np.asarray(y) - np.asarray(x))) < 0.1
    check_png(P.plot_pit_qq(ZGRID, pdfs, ztrue, tmp_path / "qq.png"), tmp_path)


def test_nz(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    fig = P.figure_nz(ZGRID, pdfs, ztrue)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 3.0))
    zg, stacked = ax.lines[0].get_data()
    assert np.trapezoid(stacked, zg) == pytest.approx(1.0, abs=1e-6)
    check_png(P.plot_nz(ZGRID, pdfs, ztrue, tmp_path / "nz.png"), tmp_path)


def test_binned_metric_plots(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    fig = P.figure_metrics_vs_mag(ZGRID, pdfs, ztrue, mag, bins=5, mag_label="i")
    ax1, ax2 = fig.axes[:2]
    assert ax2.get_xlabel() == "i"
    assert ax2.get_xlim()[0] == pytest.approx(mag.min()) and ax2.get_xlim()[1] == pytest.approx(mag.max())
    y = ax1.lines[0].get_ydata()
    assert len(y) == 5 and np.all((y > 0.01) & (y < 0.1))  # sigma_NMAD ~ 0.05 in every bin
    check_png(P.plot_metrics_vs_mag(ZGRID, pdfs, ztrue, mag, tmp_path / "mag.png"), tmp_path)
    fig = P.figure_metrics_vs_z(ZGRID, pdfs, ztrue, bins=np.linspace(0, 3, 7))
    assert fig.axes[1].get_xlim() == pytest.approx((0.0, 3.0))
    check_png(P.plot_metrics_vs_z(ZGRID, pdfs, ztrue, tmp_path / "z.png", by="zphot"), tmp_path)


def test_accepts_qp_ensemble(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    ens = M.to_ensemble(ZGRID, pdfs, ancil={"zmode": mu})
    check_png(P.plot_zphot_zspec(None, ens, ztrue, tmp_path / "ens_zz.png"), tmp_path)
    check_png(P.plot_pit_hist(None, ens, ztrue, tmp_path / "ens_pit.png"), tmp_path)


# ------------------------------------------------------------------------------------------------
# model plots: latent embeddings and outlier scores


@pytest.fixture(scope="module")
def tiny_model(dc2_tables):
    from photovaez import api

    train, test = dc2_tables
    lab = {k: v[:300] for k, v in train.items()}
    d = api.fit(lab, model_config={"hidden": [16, 16], "dim_a": 3, "dim_b": 4},
                train_config={"epochs": 2, "batch_size": 64, "min_epochs": 1, "seed": 0, "device": "cpu",
                              "progress": False})
    return d, {k: v[:200] for k, v in test.items()}


def test_pca_2d_planted():
    rng = np.random.default_rng(2)
    t = rng.normal(size=400)
    v = np.stack([3 * t, -1.5 * t, 0.01 * rng.normal(size=400)], axis=1) + 5.0  # almost a line
    proj, frac = P.pca_2d(v)
    assert proj.shape == (400, 2)
    assert frac[0] > 0.999 and frac[0] + frac[1] == pytest.approx(1.0, abs=1e-9)
    # PC1 is the centred line coordinate (up to sign), PC2 the small noise
    assert abs(np.corrcoef(proj[:, 0], t)[0, 1]) > 0.9999
    assert np.std(proj[:, 1]) < 0.02
    proj1, frac1 = P.pca_2d(t[:, None])  # one dimension: second coordinate is zero
    assert np.all(proj1[:, 1] == 0) and frac1[0] == pytest.approx(1.0)


def test_latents(tiny_model):
    from photovaez import api

    d, test = tiny_model
    z = np.asarray(test["redshift"], float)
    lat = api.latents(d, test, z=z)
    assert lat["a"].shape == (200, 3) and lat["b"].shape == (200, 4)
    np.testing.assert_array_equal(lat["z"], z)
    amort = api.latents(api.load_predictor(d), test)  # z = the amortised zmode
    np.testing.assert_allclose(amort["b"], lat["b"], rtol=1e-6)  # q(b|x) does not see z
    pred = api.load_predictor(d)
    zmode = api.estimate(pred, test, np.linspace(0, 3, 301))[1]["zmode"]
    np.testing.assert_allclose(amort["z"], np.clip(zmode, 1e-4, None))
    assert not np.allclose(amort["a"], lat["a"])  # q(a|x,b,z) does
    assert api.latents(d, {k: v[:0] for k, v in test.items()})["a"].shape == (0, 3)


def test_latent_embeddings_plot(tiny_model, tmp_path):
    d, test = tiny_model
    z = np.asarray(test["redshift"], float)
    fig = P.figure_latent_embeddings(d, test, ztrue=z)
    ax_b, ax_a = fig.axes[:2]
    assert len(fig.axes) == 3  # two panels and the colour bar
    for ax in (ax_b, ax_a):
        assert ax.get_xlabel().startswith("PC1") and ax.get_ylabel().startswith("PC2")
        pts = ax.collections[0]
        assert pts.get_offsets().shape == (200, 2)
        np.testing.assert_allclose(pts.get_array(), z)  # coloured by the given redshift
    assert "q(b|x)" in ax_b.get_title() and "q(a|x,b,z)" in ax_a.get_title()
    assert "true" in fig.axes[2].get_ylabel()
    check_png(P.plot_latent_embeddings(d, test, tmp_path / "lat" / "latent.png", ztrue=z), tmp_path)
    check_png(P.plot_latent_embeddings(d, test, tmp_path / "latent_zmode.png"), tmp_path)


def _brute_auroc(clean, corrupted):
    c, k = np.asarray(clean)[:, None], np.asarray(corrupted)[None, :]
    return (np.sum(c > k) + 0.5 * np.sum(c == k)) / (c.size * k.size)


def test_rank_auroc_matches_pairwise_count():
    rng = np.random.default_rng(4)
    clean = np.round(rng.normal(0.0, 1.0, 300), 1)  # rounded: many ties
    corrupted = np.round(rng.normal(-1.5, 2.0, 170), 1)
    auc = P.rank_auroc(clean, corrupted)
    assert auc == pytest.approx(_brute_auroc(clean, corrupted), abs=1e-12)
    assert 0.6 < auc < 0.95
    assert P.rank_auroc(clean, clean) == pytest.approx(0.5)
    assert P.rank_auroc([1.0, 2.0], [-1.0, 0.0]) == 1.0 and P.rank_auroc([-1.0, 0.0], [1.0, 2.0]) == 0.0
    assert P.rank_auroc([1.0, np.nan], [0.0, -np.inf]) == 1.0  # NaN left out, -inf is the lowest score


def test_outlier_scores_plot(tmp_path):
    rng = np.random.default_rng(5)
    clean, corrupted = rng.normal(-10, 1, 500), rng.normal(-16, 3, 200)
    auc = _brute_auroc(clean, corrupted)
    fig = P.figure_outlier_scores(clean, corrupted, bins=30)
    ax = fig.axes[0]
    assert "log p(x)" in ax.get_xlabel() and ax.get_ylabel() == "density"
    assert ax.get_xlim() == pytest.approx((min(clean.min(), corrupted.min()), max(clean.max(), corrupted.max())))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"AUROC = {auc:.3f}" in texts
    assert any(t.startswith("clean") for t in texts) and any(t.startswith("corrupted") for t in texts)
    assert len(ax.patches) == 2  # two stepfilled histograms
    check_png(P.plot_outlier_scores(clean, corrupted, tmp_path / "o" / "outliers.png"), tmp_path)
