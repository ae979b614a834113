"""photovaez.metrics against independent references (closed forms, scipy, numpy by hand)."""

import warnings

import numpy as np
import pytest
from scipy import integrate, stats

from conftest import gaussian_photoz
from photovaez import metrics as M

ZGRID = np.linspace(0.0, 3.0, 601)


def gaussian_pdfs(zgrid, mu, sigma):
    return stats.norm.pdf(zgrid[None, :], mu[:, None], sigma[:, None])


@pytest.fixture(scope="module")
def calibrated():
    """Gaussian PDFs with the true redshifts drawn from them (a calibrated estimator)."""
    mu, sigma, ztrue, _ = gaussian_photoz(1500, 42, (0.6, 2.0), 0.04)
    return mu, sigma, ztrue, gaussian_pdfs(ZGRID, mu, sigma)


def test_pit_values_match_analytic_cdf(calibrated):
    mu, sigma, ztrue, pdfs = calibrated
    pit = M.pit_values(ZGRID, pdfs, ztrue)
    assert pit.shape == ztrue.shape
    np.testing.assert_allclose(pit, stats.norm.cdf(ztrue, mu, sigma), atol=2e-3)


def test_calibrated_pit_ks_small_and_equals_scipy(calibrated):
    mu, sigma, ztrue, pdfs = calibrated
    m = M.evaluate(ZGRID, pdfs, ztrue, zpoint=mu)
    pit = M.pit_values(ZGRID, pdfs, ztrue)
    ks = stats.kstest(pit, "uniform")
    assert m["pit_ks"] == pytest.approx(ks.statistic, rel=1e-12)
    assert m["pit_ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-9)
    assert m["pit_cvm"] == pytest.approx(stats.cramervonmises(pit, "uniform").statistic, rel=1e-9)
    # a calibrated sample: KS well inside the 1 % critical value 1.63 / sqrt(N)
    assert m["pit_ks"] < 1.63 / np.sqrt(len(ztrue))
    # and close to the KS of the exact analytic PIT values
    assert m["pit_ks"] == pytest.approx(stats.kstest(stats.norm.cdf(ztrue, mu, sigma), "uniform").statistic, abs=3e-3)
    assert m["pit_outlier_rate"] < 0.01
    assert m["pit_ad"] < 2.5  # AD k-sample statistic: not rejected at 5 %


def test_overconfident_pdfs_give_large_ks():
    rng = np.random.default_rng(1)
    n = 1500
    mu = rng.uniform(0.6, 2.0, n)
    sigma = 0.05 * np.ones(n)
    ztrue = rng.normal(mu, sigma)
    m = M.evaluate(ZGRID, gaussian_pdfs(ZGRID, mu, sigma / 3), ztrue, zpoint=mu)
    # truths spread 3x wider than the PDFs: PIT piles up at 0 and 1
    # (expected KS = sup |Phi(3t) - Phi(t)| ~ 0.25 at its maximum)
    assert m["pit_ks"] > 0.2
    assert m["pit_ks_pvalue"] < 1e-10
    pit = M.pit_values(ZGRID, gaussian_pdfs(ZGRID, mu, sigma / 3), ztrue)
    assert np.mean((pit < 0.05) | (pit > 0.95)) > 0.4


def test_cde_loss_closed_form():
    rng = np.random.default_rng(3)
    n = 800
    zgrid = np.linspace(0.0, 3.0, 3001)
    mu = rng.uniform(0.8, 2.0, n)
    sigma = rng.uniform(0.05, 0.2, n)
    ztrue = rng.normal(mu, sigma)
    pdfs = gaussian_pdfs(zgrid, mu, sigma)
    exact = np.mean(1.0 / (2.0 * np.sqrt(np.pi) * sigma)) - 2.0 * np.mean(stats.norm.pdf(ztrue, mu, sigma))
    assert M.cde_loss(zgrid, pdfs, ztrue) == pytest.approx(exact, abs=2e-3)
    assert M.evaluate(zgrid, pdfs, ztrue)["cdeloss"] == pytest.approx(exact, abs=2e-3)
    scaled = pdfs * rng.uniform(0.1, 10.0, n)[:, None]  # any scale: normalised on the grid first
    assert M.cde_loss(zgrid, scaled, ztrue) == pytest.approx(exact, abs=2e-3)
    # on a coarse grid: qp's discretisation, trapezoid of p^2 and p at the grid point nearest z_true
    coarse = zgrid[::60]
    pc = pdfs[:, ::60] / integrate.trapezoid(pdfs[:, ::60], coarse, axis=1)[:, None]
    nearest = np.abs(coarse[None, :] - ztrue[:, None]).argmin(1)
    discrete = np.mean(integrate.trapezoid(pc**2, coarse, axis=1)) - 2 * np.mean(pc[np.arange(n), nearest])
    assert M.cde_loss(coarse, pdfs[:, ::60], ztrue) == pytest.approx(discrete, rel=1e-9)
    # narrower correct PDFs have lower (better) loss than wider ones around the same truths
    wide = gaussian_pdfs(zgrid, mu, 3 * sigma)
    assert M.cde_loss(zgrid, wide, ztrue) > M.cde_loss(zgrid, pdfs, ztrue)


def test_point_metrics_on_planted_dz():
    rng = np.random.default_rng(7)
    n = 4000
    ztrue = rng.uniform(0.1, 2.5, n)
    e = rng.normal(0.01, 0.03, n)
    e[:200] = rng.choice([-1, 1], 200) * rng.uniform(0.2, 0.5, 200)  # planted outliers
    zphot = ztrue + e * (1 + ztrue)
    m = M.point_metrics(zphot, ztrue)
    np.testing.assert_allclose(M.ez(zphot, ztrue), e, atol=1e-12)  # the planted errors
    np.testing.assert_allclose(M.ez(zphot[None, :10].tolist(), ztrue[:10]), e[:10], atol=1e-12)  # flattened
    q75, q25 = np.percentile(e, [75, 25])
    s_iqr = (q75 - q25) / 1.349
    assert m["sigma_iqr"] == pytest.approx(s_iqr, rel=1e-9)
    assert m["bias"] == pytest.approx(np.median(e), rel=1e-9)
    assert m["sigma_nmad"] == pytest.approx(1.4826 * np.median(np.abs(e - np.median(e))), rel=1e-9)
    assert m["outlier_rate"] == pytest.approx(np.mean(np.abs(e) > max(0.06, 3 * s_iqr)))
    assert m["catastrophic_fraction"] == pytest.approx(np.mean(np.abs(e) > 0.15))
    assert m["catastrophic_fraction"] == pytest.approx(200 / n)
    # the robust widths see the core (0.03), not the outliers
    assert 0.027 < m["sigma_nmad"] < 0.034
    with pytest.raises(ValueError):
        M.point_metrics(zphot[:-1], ztrue)
    assert all(np.isnan(v) for v in M.point_metrics(zphot[:0], ztrue[:0]).values())


def test_outlier_rate_uses_floor_of_006():
    ztrue = np.linspace(0.2, 1.0, 1000)
    e = np.zeros(1000)
    e[:50] = 0.07  # above the 0.06 floor (3 sigma_IQR = 0 here)
    e[50:100] = 0.05  # below it
    m = M.point_metrics(ztrue + e * (1 + ztrue), ztrue)
    assert m["outlier_rate"] == pytest.approx(0.05)
    assert m["catastrophic_fraction"] == 0.0


def test_evaluate_keys_ensemble_and_default_point(calibrated):
    mu, sigma, ztrue, pdfs = calibrated
    m_arr = M.evaluate(ZGRID, pdfs, ztrue)
    ens = M.to_ensemble(ZGRID, pdfs, ancil={"zmode": mu})
    m_ens = M.evaluate(None, ens, ztrue)  # grid from the interp ensemble, zmode from its ancil
    for k in ("n", "cdeloss", "pit_ks", "pit_cvm", "pit_ad", "pit_outlier_rate", "sigma_iqr", "bias",
              "outlier_rate", "sigma_nmad", "catastrophic_fraction"):
        assert np.isfinite(m_arr[k]), k
    assert m_ens["cdeloss"] == pytest.approx(m_arr["cdeloss"], rel=1e-9)
    assert m_ens["pit_ks"] == pytest.approx(m_arr["pit_ks"], rel=1e-9)
    assert m_ens["sigma_nmad"] == pytest.approx(M.point_metrics(mu, ztrue)["sigma_nmad"])
    # default point estimate (grid mode) is the Gaussian mean to grid precision
    assert m_arr["bias"] == pytest.approx(M.point_metrics(mu, ztrue)["bias"], abs=1e-3)


def test_evaluate_drops_nonfinite_truths_and_checks_shapes(calibrated):
    mu, sigma, ztrue, pdfs = calibrated
    zt = ztrue.copy()
    zt[:5] = np.nan
    m = M.evaluate(ZGRID, pdfs, zt, zpoint=mu)
    assert m["n"] == len(zt) - 5 and m["n_dropped"] == 5
    with pytest.raises(ValueError):
        M.evaluate(ZGRID, pdfs, ztrue[:-1])
    with pytest.raises(ValueError):
        M.evaluate(ZGRID[:-1], pdfs, ztrue)


def by_hand(e):
    """Point metrics of planted ez values with numpy (the LSST definitions)."""
    q75, q25 = np.percentile(e, [75, 25])
    s_iqr = (q75 - q25) / 1.349
    return {"sigma_iqr": s_iqr, "bias": np.median(e), "outlier_rate": np.mean(np.abs(e) > max(0.06, 3 * s_iqr)),
            "sigma_nmad": 1.4826 * np.median(np.abs(e - np.median(e))),
            "catastrophic_fraction": np.mean(np.abs(e) > 0.15)}


def test_binned_point_metrics():
    rng = np.random.default_rng(5)
    n = 3000
    mag = rng.uniform(20, 25, n)
    ztrue = rng.uniform(0.1, 2.0, n)
    e = rng.normal(0, 0.01 * (mag - 19))  # scatter grows with magnitude
    e[:60] = rng.choice([-1, 1], 60) * rng.uniform(0.2, 0.4, 60)
    zphot = ztrue + e * (1 + ztrue)
    mag[-6:] = [19.0, 26.0, np.nan, 21.5, 22.0, 25.0]  # outside the edges, NaN, on an edge (the upper one)
    zphot[-3] = np.nan  # a NaN point estimate
    edges = np.array([20, 21, 22, 23, 24, 25.0])
    b = M.binned_point_metrics(mag, zphot, ztrue, bins=edges)
    np.testing.assert_array_equal(b["edges"], edges)
    np.testing.assert_allclose(b["centers"], [20.5, 21.5, 22.5, 23.5, 24.5])
    ok = np.isfinite(mag) & np.isfinite(zphot)
    np.testing.assert_array_equal(b["count"], np.histogram(mag[ok], bins=edges)[0])
    for j in range(5):
        upper = mag <= edges[j + 1] if j == 4 else mag < edges[j + 1]  # the last bin includes its upper edge
        sel = ok & (mag >= edges[j]) & upper
        for k, v in by_hand(e[sel]).items():
            assert b[k][j] == pytest.approx(v, rel=1e-9, abs=1e-15), (j, k)
    assert np.all(np.diff(b["sigma_nmad"]) > 0)
    # equal-count bins on the quantiles; bins with fewer than min_count galaxies give NaN
    bq = M.binned_point_metrics(mag, zphot, ztrue, bins=4)
    np.testing.assert_allclose(bq["edges"], np.quantile(mag[ok], np.linspace(0, 1, 5)))
    assert len(bq["centers"]) == 4 and abs(bq["count"].min() - ok.sum() / 4) <= 2
    few = M.binned_point_metrics(mag, zphot, ztrue, bins=np.array([20, 20.01, 25]), min_count=10)
    assert few["count"][0] < 10 and np.isnan(few["sigma_nmad"][0]) and np.isfinite(few["sigma_nmad"][1])


def test_pit_outlier_rate_is_the_fraction_of_extreme_pit_values():
    from photovaez.metrics import pit_metrics

    u = np.random.default_rng(3).uniform(0.01, 0.99, 200)
    u[:3], u[3:5] = 0.0, 1.0  # 5 of 200 outside [1e-4, 0.9999]
    assert pit_metrics(u)["pit_outlier_rate"] == pytest.approx(5 / 200)


def test_pit_metrics_match_scipy():
    rng = np.random.default_rng(2)
    for n in (500, 60):  # 60 < 100: qp's PIT grid has one point per value
        pit = rng.beta(2.0, 2.0, n)  # not uniform
        m = M.pit_metrics(pit)
        ks, cvm = stats.kstest(pit, "uniform"), stats.cramervonmises(pit, "uniform")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ad = stats.anderson_ksamp([pit, np.linspace(0.0, 1.0, n)])
            ad_p = getattr(ad, "pvalue", ad.significance_level)
        u = np.sort(pit)
        i = np.arange(1, n + 1)
        assert m["pit_ks"] == pytest.approx(np.max(np.maximum(i / n - u, u - (i - 1) / n)), rel=1e-12)
        assert m["pit_ks"] == pytest.approx(ks.statistic, rel=1e-12)
        assert m["pit_ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-9)
        assert m["pit_cvm"] == pytest.approx(cvm.statistic, rel=1e-9)
        assert m["pit_cvm_pvalue"] == pytest.approx(cvm.pvalue, rel=1e-9)
        assert m["pit_ad"] == pytest.approx(ad.statistic, rel=1e-6)
        assert m["pit_ad_significance"] == pytest.approx(ad_p, rel=1e-6)
        assert m["pit_outlier_rate"] == 0.0


def test_pit_values_outside_the_grid_and_of_an_ensemble():
    zgrid = np.linspace(0.2, 3.0, 281)
    rng = np.random.default_rng(8)
    mu = rng.uniform(0.8, 1.5, 30)
    ztrue = rng.normal(mu, 0.1)
    ztrue[:2] = [0.1, 3.5]  # below and above the grid
    pdfs = gaussian_pdfs(zgrid, mu, np.full(30, 0.1))
    pit = M.pit_values(zgrid, pdfs, ztrue)
    assert pit[0] == 0.0 and pit[1] == 1.0
    np.testing.assert_allclose(pit[2:], stats.norm.cdf(ztrue[2:], mu[2:], 0.1), atol=2e-3)
    np.testing.assert_allclose(M.pit_values(None, M.to_ensemble(zgrid, pdfs), ztrue), pit, atol=1e-12)


def test_evaluate_against_planted_point_errors_and_analytic_pit(calibrated):
    mu, sigma, ztrue, pdfs = calibrated
    rng = np.random.default_rng(9)
    e = rng.normal(0.005, 0.02, len(ztrue))
    e[:40] = 0.3  # catastrophic
    zpoint = ztrue + e * (1 + ztrue)
    zt = ztrue.copy()
    zt[::200] = np.nan  # left out, with their point estimates
    m = M.evaluate(ZGRID, pdfs, zt, zpoint=zpoint)
    keep = np.isfinite(zt)
    assert m["n"] == keep.sum() and m["n_dropped"] == len(zt) - keep.sum() == 8
    for k, v in by_hand(e[keep]).items():
        assert m[k] == pytest.approx(v, rel=1e-9, abs=1e-15), k
    # the PDF metrics: of the analytic PIT (KS to the grid's precision) and the closed-form CDE loss
    pit = stats.norm.cdf(ztrue[keep], mu[keep], sigma[keep])
    assert m["pit_ks"] == pytest.approx(stats.kstest(pit, "uniform").statistic, abs=3e-3)
    assert m["pit_cvm"] == pytest.approx(stats.cramervonmises(pit, "uniform").statistic, rel=0.02)
    exact = np.mean(1.0 / (2.0 * np.sqrt(np.pi) * sigma[keep])) - 2.0 * np.mean(
        stats.norm.pdf(ztrue[keep], mu[keep], sigma[keep]))
    assert m["cdeloss"] == pytest.approx(exact, abs=1e-2)  # p(z_true) at the nearest of points 0.005 apart


def test_pit_of_one_and_of_extreme_galaxies():
    """PIT needs no minimum sample: one galaxy, and three whose truths lie below, at the median of,
    and above their Gaussian PDFs, give the analytic CDF values."""
    from scipy.stats import norm

    zg = np.linspace(0.0, 3.0, 3001)
    mu = np.array([1.0, 1.5, 2.0])
    pdfs = norm.pdf(zg[None, :], mu[:, None], 0.1)
    zt = np.array([0.0, 1.5, 3.0])
    np.testing.assert_allclose(M.pit_values(zg, pdfs, zt), norm.cdf(zt, mu, 0.1), atol=1e-6)
    np.testing.assert_allclose(M.pit_values(zg, pdfs[1:2], [1.55]), norm.cdf(1.55, 1.5, 0.1), atol=1e-4)


def test_pit_on_a_grid_is_the_qp_ensembles_cdf():
    # the direct computation against qp.interp's own CDF: an uneven grid, PDFs with mass at its first
    # point (qp's cumulative integral puts y_0 dz_0 / 2 there), true values at the grid ends,
    # on grid points, between them and NaN
    rng = np.random.default_rng(3)
    zgrid = np.sort(np.concatenate([[0.0, 3.0], rng.uniform(0.0, 3.0, 120)]))
    pdfs = rng.uniform(0.0, 1.0, (12, len(zgrid))) + np.linspace(2.0, 0.0, len(zgrid))
    ztrue = np.array([0.0, 3.0, zgrid[7], zgrid[50], 1.2345, 0.001, 2.999, np.nan, -1.0, 4.0, 0.5, 2.5])
    import qp

    ens = qp.Ensemble(qp.interp, data=dict(xvals=zgrid, yvals=pdfs))
    want = np.asarray(ens.cdf(ztrue[:, None]), np.float64).reshape(-1)
    want = np.where(np.isfinite(want), want, 0.0)
    np.testing.assert_allclose(M.pit_values(zgrid, pdfs, ztrue), want, rtol=0, atol=1e-12)
