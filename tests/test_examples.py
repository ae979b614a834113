import json
import os
import runpy
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(HERE, "..", "examples", "dc2_main.py")


def test_main_job_writes_pdfs_metrics_and_plots(tmp_path, monkeypatch):
    """The README's main job, on a small subset: every promised output exists and is sensible."""
    import qp

    monkeypatch.setattr(sys, "argv", ["dc2_main.py", "--out", str(tmp_path), "--n-train", "300",
                                      "--n-test", "200", "--epochs", "2", "--hidden", "16,16",
                                      "--n-latent", "100"])
    runpy.run_path(MAIN, run_name="__main__")
    ens = qp.read(str(tmp_path / "output_estimate_photovaez.hdf5"))
    assert ens.npdf == 200
    zgrid = np.ravel(ens.metadata["xvals"])
    np.testing.assert_allclose(np.trapezoid(ens.objdata["yvals"], zgrid, axis=1), 1.0, rtol=1e-6)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["photovaez"]["n"] == 200 and np.isfinite(m["photovaez"]["cdeloss"])
    # our metrics agree with RAIL's own evaluator
    assert abs(m["photovaez"]["sigma_iqr"] - m["rail_single_evaluator"]["point_stats_iqr_zmode_redshift"]) < 1e-6
    assert "PIT KS" in (tmp_path / "metrics.md").read_text()
    assert 0.0 <= m["photovaez"]["log_px_auroc"] <= 1.0
    for name in ("zphot_zspec", "pit_hist", "pit_qq", "nz", "metrics_vs_mag_i", "metrics_vs_z", "latent_embeddings",
                 "outlier_scores"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_corrupt_shifts_one_detected_band_per_galaxy():
    mod = runpy.run_path(MAIN)
    rng = np.random.default_rng(0)
    t = {f"mag_{b}_lsst": rng.uniform(20, 26, 50) for b in "ugrizy"}
    t["mag_u_lsst"][:5] = 99.0  # non-detections stay as they are
    t["redshift"] = rng.uniform(0.1, 2, 50)
    c = mod["corrupt"](t, seed=3)
    diff = np.stack([c[f"mag_{b}_lsst"] - t[f"mag_{b}_lsst"] for b in "ugrizy"], axis=1)
    changed = np.abs(diff) > 0
    assert changed.sum(axis=1).max() == 1 and changed.sum() >= 45
    np.testing.assert_allclose(np.abs(diff[changed]), 1.5)
    assert (c["mag_u_lsst"][:5] == 99.0).all()
    np.testing.assert_array_equal(c["redshift"], t["redshift"])
