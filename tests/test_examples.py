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
                                      "--n-test", "200", "--epochs", "2", "--hidden", "16,16"])
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
    for name in ("zphot_zspec", "pit_hist", "pit_qq", "nz", "metrics_vs_mag_i", "metrics_vs_z"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
