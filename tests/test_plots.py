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
