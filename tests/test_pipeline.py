"""End to end: examples/build_pipeline.py writes a ceci pipeline (inform -> estimate -> RAIL
SingleEvaluator) on small DC2 subsets, and ``ceci <yml>`` runs it in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qp
import tables_io
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load_builder():
    spec = importlib.util.spec_from_file_location("photovaez_build_pipeline", ROOT / "examples" / "build_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ceci_pipeline_end_to_end(tmp_path):
    bindir = os.path.dirname(sys.executable)
    ceci = shutil.which("ceci", path=bindir) or shutil.which("ceci")
    if ceci is None:
        pytest.skip("the ceci command is not installed")
    out = tmp_path / "run"
    yml = _load_builder().main([
        "--output-dir", str(out), "--n-train", "400", "--n-test", "300", "--n-unlabeled", "100",
        "--epochs", "3", "--hidden", "32,32", "--batch-size", "128", "--chunk-size", "128", "--device", "cpu",
        "--posteriors", "amortized", "grid", "--n-importance", "8",  # hmc: in the stage tests (each stage
        "--proposal-steps", "0", "--no-posterior-calibration",        # here is a process: ~10 s of imports)
    ])
    assert os.path.isfile(yml) and os.path.isfile(yml.replace(".yml", "_config.yml"))
    pipe = yaml.safe_load(Path(yml).read_text())
    assert sorted(s["classname"] for s in pipe["stages"]) == sorted(["PhotoVAEzInformer"] + [
        "PhotoVAEzEstimator", "SingleEvaluator"] * 2)
    assert pipe["stages"][0]["aliases"]["unlabeled"] == "input_unlabeled"

    # the stages run as `python3 -m ceci ...`: put this interpreter first on the PATH
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([ceci, yml], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text()[-2000:] for p in out.glob("*.out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs

    from photovaez.io import load_model

    report = load_model(out / "model_inform_photovaez.pkl")["report"]
    assert report["n_unlabelled"] > 0 and report["n_labelled"] > 0  # the unlabeled input was used

    ens = qp.read(str(out / "output_estimate_photovaez.hdf5"))
    assert ens.npdf == 300 and ens.gen_class is qp.interp_gen
    zgrid = np.linspace(0.0, 3.0, 301)
    np.testing.assert_allclose(np.trapezoid(ens.pdf(zgrid), zgrid, axis=1), 1.0, atol=1e-6)
    assert {"zmode", "zmean", "zmedian", "n_nondetect", "pdf_flag", "redshift"} <= set(ens.ancil)

    summary = tables_io.read(str(out / "summary_evaluate_photovaez.hdf5"))
    for key in ("cdeloss_redshift", "point_bias_zmode_redshift", "point_stats_iqr_zmode_redshift"):
        assert key in summary and np.all(np.isfinite(summary[key])), (key, list(summary))
    per_object = tables_io.read(str(out / "output_evaluate_photovaez.hdf5"))
    assert len(per_object["point_stats_ez_zmode_redshift"]) == 300

    # the model-posterior stages ran too, with their diagnostics in the ancil
    for mode, keys in (("grid", {"log_px", "ess_at_mode"}),):
        ens = qp.read(str(out / f"output_estimate_photovaez_{mode}.hdf5"))
        assert ens.npdf == 300 and keys <= set(ens.ancil), (mode, set(ens.ancil))
        np.testing.assert_allclose(np.trapezoid(ens.pdf(zgrid), zgrid, axis=1), 1.0, atol=1e-6)
        summary = tables_io.read(str(out / f"summary_evaluate_photovaez_{mode}.hdf5"))
        assert np.isfinite(summary["cdeloss_redshift"]).all()
