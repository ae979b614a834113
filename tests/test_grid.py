"""photovaez.grid (cells, normalisation, point estimates) and photovaez.calibration (temperature)."""

import numpy as np
import pytest
from scipy import stats

from photovaez.calibration import apply_temperature, fit_temperature
from photovaez.grid import cell_edges, normalise, point_estimates, redshift_grid
from photovaez.metrics import ks_uniform, pit_values


def test_grid_and_cells():
    z = redshift_grid(0.0, 3.0, 301)
    e = cell_edges(z)
    assert e[0] == 0.0 and e[-1] == pytest.approx(3.005) and len(e) == 302
    np.testing.assert_allclose(e[1:-1], z[:-1] + 0.005)
    with pytest.raises(ValueError, match="zmax"):
        redshift_grid(1.0, 0.5, 10)


def test_point_estimates_of_a_gaussian():
    z = redshift_grid(0.0, 3.0, 301)
    pdf = stats.norm(1.2345, 0.1).pdf(z)[None, :] * np.ones((2, 1))
    pdf, flag = normalise(z, pdf)
    pe = point_estimates(z, pdf)
    np.testing.assert_allclose(pe["zmode"], 1.2345, atol=2e-3)
    np.testing.assert_allclose(pe["zmean"], 1.2345, atol=1e-4)
    np.testing.assert_allclose(pe["zmedian"], 1.2345, atol=1e-3)
    skew = stats.lognorm(s=0.5, scale=0.8)
    p2, _ = normalise(z, skew.pdf(z)[None, :])
    pe2 = point_estimates(z, p2)
    assert pe2["zmedian"][0] == pytest.approx(skew.median(), abs=3e-3)
    assert pe2["zmode"][0] == pytest.approx(0.8 * np.exp(-0.25), abs=5e-3)
    assert flag.tolist() == [0, 0]


def test_normalise_flags_bad_rows():
    z = redshift_grid(0.0, 1.0, 11)
    pdf = np.stack([np.ones(11), np.zeros(11), np.full(11, np.nan)])
    out, flag = normalise(z, pdf)
    assert flag.tolist() == [0, 1, 1]
    np.testing.assert_allclose(np.trapezoid(out, z, axis=1), 1.0)


def test_temperature_calibration_recovers_a_known_miscalibration():
    """Truths drawn from N(mu, 0.1^2) but PDFs of width 0.05: fit_temperature finds T ~ 4
    (width scales as sqrt(T) for Gaussians) and the PIT KS after calibration is small."""
    rng = np.random.default_rng(0)
    z = redshift_grid(0.0, 3.0, 601)
    mu = rng.uniform(0.8, 2.0, 2000)
    ztrue = mu + 0.1 * rng.standard_normal(2000)
    narrow = stats.norm(mu[:, None], 0.05).pdf(z[None, :])
    res = fit_temperature(z, narrow, ztrue, temperatures=np.geomspace(0.5, 8, 81))
    assert res["temperature"] == pytest.approx(4.0, rel=0.15)
    assert res["ks_before"] > 0.15 and res["ks_after"] < 0.03
    # the PIT of the exact PDFs matches scipy's CDF
    exact = stats.norm(mu[:, None], 0.1).pdf(z[None, :])
    np.testing.assert_allclose(pit_values(z, normalise(z, exact)[0], ztrue), stats.norm(mu, 0.1).cdf(ztrue),
                               atol=2e-3)
    widened, _ = apply_temperature(z, narrow, 4.0)
    np.testing.assert_allclose(widened, normalise(z, exact)[0], rtol=1e-6, atol=1e-9)
    assert ks_uniform(np.linspace(0.0005, 0.9995, 1000)) < 2e-3
    assert fit_temperature(z, narrow[:10], ztrue[:10])["temperature"] == 1.0  # too few galaxies
