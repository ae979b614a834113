"""photovaez.plots: the drawn data against numpy / scipy computations of the inputs, and PNGs that decode."""

import re

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import integrate, stats

from conftest import gaussian_photoz
from photovaez import metrics as M
from photovaez import plots as P

ZGRID = np.linspace(0.0, 3.0, 301)


@pytest.fixture(scope="module")
def sample():
    mu, sigma, ztrue, rng = gaussian_photoz(600, 0, (0.2, 2.5), 0.05)
    ztrue = np.clip(ztrue, 0.01, None)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], sigma[:, None])
    mag = rng.uniform(20, 25, len(mu))
    return pdfs, ztrue, mag, mu


def check_png(path, tmp_path, fig):
    """The file is a PNG that decodes to the figure's size in pixels and is not blank."""
    assert str(path).startswith(str(tmp_path))
    img = mpimg.imread(path)
    width, height = np.round(fig.get_size_inches() * P.DPI).astype(int)
    assert img.shape[:2] == (height, width) and img.shape[2] in (3, 4)
    assert np.std(img[..., :3]) > 0.05


def last_numbers(text):
    """The last number on each line of a text."""
    return [float(re.findall(r"[-+]?\d+\.?\d*", line)[-1]) for line in text.splitlines()]


def step_heights(poly):
    """(left edges, right edges, heights) of the bins of a step histogram drawn as a polygon."""
    xy = poly.get_xy()
    seg = [(x0, x1, y0) for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]) if y0 == y1 and x1 > x0]
    lo, hi, h = np.array(seg).T
    return lo, hi, h


def test_zphot_zspec(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    zp = mu.copy()
    zp[:3] = [2.9, 0.05, 1.5]  # a few catastrophic outliers
    fig = P.figure_zphot_zspec(ZGRID, pdfs, ztrue, zpoint=zp, bins=60)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 3.0)) and ax.get_ylim() == pytest.approx((0.0, 3.0))
    # the colour mesh holds the 2-D histogram (x = z_true, y = z_phot); empty cells masked (cmin = 1)
    counts, _, _ = np.histogram2d(ztrue, zp, bins=60, range=[(0.0, 3.0), (0.0, 3.0)])
    mesh = ax.collections[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(mesh, 0.0).reshape(60, 60), counts.T)
    assert np.ma.count(mesh) == np.count_nonzero(counts)
    # the legend's metrics of ez = (zp - zt) / (1 + zt), by hand
    e = (zp - ztrue) / (1 + ztrue)
    q75, q25 = np.percentile(e, [75, 25])
    ref = [len(ztrue), 1.4826 * np.median(np.abs(e - np.median(e))), np.median(e),
           np.mean(np.abs(e) > max(0.06, 3 * (q75 - q25) / 1.349)), np.mean(np.abs(e) > 0.15)]
    np.testing.assert_allclose(last_numbers(ax.texts[0].get_text()), ref, atol=5e-4)  # printed to 3-4 decimals
    check_png(P.plot_zphot_zspec(ZGRID, pdfs, ztrue, tmp_path / "a" / "zz.png", zpoint=zp, bins=60), tmp_path, fig)


def test_pit_hist(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    pit = np.random.default_rng(1).beta(2.0, 2.0, 700)
    fig = P.figure_pit_hist(None, None, None, bins=20, pit=pit)
    ax = fig.axes[0]
    bars = ax.patches[:20]
    ref, edges = np.histogram(pit, bins=20, range=(0, 1), density=True)
    np.testing.assert_allclose([b.get_height() for b in bars], ref, rtol=1e-12)
    np.testing.assert_allclose([b.get_x() for b in bars], edges[:-1], atol=1e-12)
    ks = [last_numbers(t.get_text())[0] for t in ax.get_legend().get_texts() if "KS" in t.get_text()][0]
    assert ks == pytest.approx(stats.kstest(pit, "uniform").statistic, abs=5e-5)
    # from PDFs: the histogram of their PIT values, close to that of the analytic Gaussian CDFs
    fig = P.figure_pit_hist(ZGRID, pdfs, ztrue, bins=20)
    heights = np.array([b.get_height() for b in fig.axes[0].patches[:20]])
    np.testing.assert_allclose(heights, np.histogram(M.pit_values(ZGRID, pdfs, ztrue), 20, (0, 1), density=True)[0])
    exact = np.histogram(stats.norm.cdf(ztrue, mu, 0.05 * (1 + mu)), 20, (0, 1))[0]
    assert np.abs(heights * len(ztrue) / 20 - exact).sum() <= 0.02 * len(ztrue)  # PIT within ~1e-3
    check_png(P.plot_pit_hist(ZGRID, pdfs, ztrue, tmp_path / "pit.png", bins=20), tmp_path, fig)


def test_pit_qq(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    pit = np.random.default_rng(2).beta(2.0, 2.0, 700)
    fig = P.figure_pit_qq(None, None, None, n_quantiles=51, pit=pit)
    ax, ax2 = fig.axes
    assert ax.get_xlim() == pytest.approx((0.0, 1.0)) and ax.get_ylim() == pytest.approx((0.0, 1.0))
    q = np.linspace(0, 1, 51)
    x, y = ax.lines[1].get_data()
    np.testing.assert_allclose(x, q)
    np.testing.assert_allclose(y, np.percentile(pit, 100 * q), rtol=1e-12)
    x2, dy = ax2.lines[1].get_data()
    np.testing.assert_allclose(dy, np.percentile(pit, 100 * q) - q, atol=1e-12)
    fig = P.figure_pit_qq(ZGRID, pdfs, ztrue)
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(),
                               np.percentile(stats.norm.cdf(ztrue, mu, 0.05 * (1 + mu)), np.linspace(0, 100, 101)),
                               atol=3e-3)  # the PIT of grid PDFs within ~1e-3 of the analytic one
    check_png(P.plot_pit_qq(ZGRID, pdfs, ztrue, tmp_path / "qq.png"), tmp_path, fig)


def test_nz(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    scaled = pdfs * np.random.default_rng(3).uniform(0.5, 2.0, len(pdfs))[:, None]  # normalised inside
    fig = P.figure_nz(ZGRID, scaled, ztrue, bins=30)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 3.0))
    zg, stacked = ax.lines[0].get_data()
    np.testing.assert_allclose(zg, ZGRID)
    mean_pdf = np.mean(scaled / integrate.trapezoid(scaled, ZGRID, axis=1)[:, None], axis=0)
    np.testing.assert_allclose(stacked, mean_pdf, rtol=1e-9, atol=1e-12)
    # the true n(z): a filled step histogram with density of the true redshifts
    ref, edges = np.histogram(ztrue, bins=30, range=(0.0, 3.0), density=True)
    lo, hi, h = step_heights(ax.patches[0])
    np.testing.assert_allclose(lo, edges[:-1], atol=1e-12)
    np.testing.assert_allclose(h, ref, rtol=1e-12)
    check_png(P.plot_nz(ZGRID, scaled, ztrue, tmp_path / "nz.png", bins=30), tmp_path, fig)


def test_binned_metric_plots(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    fig = P.figure_metrics_vs_mag(ZGRID, pdfs, ztrue, mag, bins=5, zpoint=mu, mag_label="i")
    ax1, ax2 = fig.axes[:2]
    assert ax2.get_xlabel() == "i"
    assert ax2.get_xlim()[0] == pytest.approx(mag.min()) and ax2.get_xlim()[1] == pytest.approx(mag.max())
    # sigma_NMAD and the catastrophic fraction in 5 equal-count magnitude bins, by hand
    edges = np.quantile(mag, np.linspace(0, 1, 6))
    idx = np.clip(np.searchsorted(edges, mag, side="right") - 1, 0, 4)
    e = (mu - ztrue) / (1 + ztrue)
    nmad = [1.4826 * np.median(np.abs(e[idx == j] - np.median(e[idx == j]))) for j in range(5)]
    cat = [np.mean(np.abs(e[idx == j]) > 0.15) for j in range(5)]
    np.testing.assert_allclose(ax1.lines[0].get_xdata(), 0.5 * (edges[1:] + edges[:-1]))
    np.testing.assert_allclose(ax1.lines[0].get_ydata(), nmad, rtol=1e-9)
    np.testing.assert_allclose(ax2.lines[1].get_ydata(), cat, rtol=1e-9)
    check_png(P.plot_metrics_vs_mag(ZGRID, pdfs, ztrue, mag, tmp_path / "mag.png", bins=5, zpoint=mu,
                                    mag_label="i"), tmp_path, fig)
    fig = P.figure_metrics_vs_z(ZGRID, pdfs, ztrue, bins=np.linspace(0, 3, 7), zpoint=mu, by="zphot")
    assert fig.axes[1].get_xlim() == pytest.approx((0.0, 3.0))
    sel = (mu >= 1.0) & (mu < 1.5)  # third bin, binned by the point estimate
    assert fig.axes[0].lines[0].get_ydata()[2] == pytest.approx(
        1.4826 * np.median(np.abs(e[sel] - np.median(e[sel]))), rel=1e-9)
    check_png(P.plot_metrics_vs_z(ZGRID, pdfs, ztrue, tmp_path / "z.png", bins=np.linspace(0, 3, 7), zpoint=mu,
                                  by="zphot"), tmp_path, fig)


def test_dz_vs_mag_and_z(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    zp = mu.copy()
    zp[:4] = ztrue[:4] + (1 + ztrue[:4]) * np.array([0.9, 0.7, -0.6, -0.55])  # beyond +-0.5: in the edge cells
    fig = P.figure_dz_vs_mag_and_z(zp, ztrue, mag, mag_label="i", title="t", bins=6, hist_bins=40)
    assert len(fig.axes) == 4 and fig._suptitle.get_text() == "t"  # two panels and their colour bars
    dz = (zp - ztrue) / (1 + ztrue)
    assert np.sum(np.abs(dz) > 0.5) == 4
    for ax, x, xlabel in ((fig.axes[0], mag, "i (magnitude)"), (fig.axes[1], ztrue, "$z_{true}$")):
        assert ax.get_xlabel() == xlabel and ax.get_ylabel() == "$\\Delta z / (1 + z_{true})$"
        assert ax.get_ylim() == pytest.approx((-0.5, 0.5))
        assert ax.get_xlim() == pytest.approx((x.min(), x.max()))
        # the density: a 2-D histogram of (x, dz/(1+z) clipped to [-0.5, 0.5]), every galaxy counted
        counts = np.histogram2d(x, np.clip(dz, -0.5, 0.5), bins=40, range=[(x.min(), x.max()), (-0.5, 0.5)])[0]
        mesh = ax.collections[0].get_array()
        np.testing.assert_array_equal(np.ma.filled(mesh, 0.0).reshape(40, 40), counts.T)
        assert counts.sum() == len(x) and counts[:, 0].sum() >= 2 and counts[:, -1].sum() >= 2
        # running median / 16th / 84th percentiles of the unclipped dz in 6 equal-count bins, by hand
        edges = np.quantile(x, np.linspace(0, 1, 7))
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 5)
        for line, q in zip(ax.lines[:3], (50, 16, 84)):
            np.testing.assert_allclose(line.get_xdata(), 0.5 * (edges[1:] + edges[:-1]), rtol=1e-12)
            np.testing.assert_allclose(line.get_ydata(), [np.percentile(dz[idx == j], q) for j in range(6)],
                                       rtol=1e-12)
        assert ax.lines[0].get_ydata()[2] == pytest.approx(np.median(dz[idx == 2]), rel=1e-12)
        # the catastrophic lines at +-0.15, dashed, across the panel
        for line, y in zip(ax.lines[3:5], (0.15, -0.15)):
            assert line.get_linestyle() == "--"
            np.testing.assert_allclose(line.get_ydata(), [y, y])
            np.testing.assert_allclose(line.get_xdata(), [x.min(), x.max()])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("0.15" in t for t in legend) and any(t.startswith(f"N = {len(x)}, 4 beyond") for t in legend)
    # non-finite magnitudes leave the left panel only; mismatched lengths are an error
    m2 = mag.copy()
    m2[10:20] = np.nan
    fig2 = P.figure_dz_vs_mag_and_z(zp, ztrue, m2, bins=6, hist_bins=40)
    assert np.ma.filled(fig2.axes[0].collections[0].get_array(), 0).sum() == len(mag) - 10
    assert np.ma.filled(fig2.axes[1].collections[0].get_array(), 0).sum() == len(mag)
    with pytest.raises(ValueError, match="length"):
        P.figure_dz_vs_mag_and_z(zp, ztrue, mag[:-1])
    path = P.plot_dz_vs_mag_and_z(zp, ztrue, mag, tmp_path / "d" / "dz.png", bins=6, hist_bins=40)
    assert path == str(tmp_path / "d" / "dz.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    check_png(path, tmp_path, fig)


def test_accepts_qp_ensemble(sample, tmp_path):
    pdfs, ztrue, mag, mu = sample
    ens = M.to_ensemble(ZGRID, pdfs, ancil={"zmode": mu})
    fig = P.figure_zphot_zspec(None, ens, ztrue, bins=60)  # grid from the ensemble, zmode from its ancil
    counts = np.histogram2d(ztrue, mu, bins=60, range=[(0.0, 3.0), (0.0, 3.0)])[0]
    np.testing.assert_array_equal(np.ma.filled(fig.axes[0].collections[0].get_array(), 0.0).reshape(60, 60), counts.T)
    check_png(P.plot_zphot_zspec(None, ens, ztrue, tmp_path / "ens_zz.png", bins=60), tmp_path, fig)
    fig = P.figure_pit_hist(None, ens, ztrue, bins=20)
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches[:20]],
                               np.histogram(M.pit_values(ZGRID, pdfs, ztrue), 20, (0, 1), density=True)[0])
    check_png(P.plot_pit_hist(None, ens, ztrue, tmp_path / "ens_pit.png"), tmp_path, fig)


# ------------------------------------------------------------------------------------------------
# model plots: latent embeddings and outlier scores


@pytest.fixture(scope="module")
def tiny_model(dc2_tables):
    from photovaez import api

    train, test = dc2_tables
    lab = {k: v[:300] for k, v in train.items()}
    d = api.fit(lab, model_config={"hidden": [16, 16], "dim_a": 3, "dim_b": 4},
                train_config={"epochs": 2, "batch_size": 64, "min_epochs": 1, "seed": 0, "device": "cpu",
                              "progress": False, "proposal_steps": 0, "calibrate_posterior": False})
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
    check_png(P.plot_latent_embeddings(d, test, tmp_path / "lat" / "latent.png", ztrue=z), tmp_path, fig)
    check_png(P.plot_latent_embeddings(d, test, tmp_path / "latent_zmode.png"), tmp_path, fig)


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
    clean[:2], corrupted[:3] = np.nan, np.nan  # left out
    fig = P.figure_outlier_scores(clean, corrupted, bins=30)
    ax = fig.axes[0]
    c, k = clean[2:], corrupted[3:]
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and "AUROC" in a.get_text())]
    assert len(texts) >= 1 and last_numbers(texts[0])[0] == pytest.approx(_brute_auroc(c, k), abs=5e-4)
    # one filled histogram per sample, each holding all of its finite values (fractions summing to 1)
    polys = [p for p in ax.patches if len(p.get_xy()) > 4]
    assert len(polys) == 2
    for poly in polys:
        assert step_heights(poly)[2].sum() == pytest.approx(1.0, rel=1e-9)
    counts = [last_numbers(t.get_text())[0] for t in ax.get_legend().get_texts() if "N =" in t.get_text()]
    assert counts == [len(c), len(k)]
    check_png(P.plot_outlier_scores(clean, corrupted, tmp_path / "o" / "outliers.png", bins=30), tmp_path, fig)
