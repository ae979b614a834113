"""benchmarks/compare.py on a tiny subset: one subprocess per estimator, failures isolated.

Only estimators of rail_base (trainZ) and PhotoVAEz itself are required (CI installs ``.[test]``).
"""

import importlib.util
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARE = os.path.join(HERE, "..", "benchmarks", "compare.py")


def _load_compare():
    spec = importlib.util.spec_from_file_location("photovaez_bench_compare", COMPARE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_runs_each_estimator_isolated(tmp_path):
    compare = _load_compare()
    rc = compare.main(["--estimators", "trainZ", "NoSuchEstimator", "PhotoVAEz", "--scenarios", "full",
                       "--n-train", "300", "--n-test", "200", "--photovaez-epochs", "2",
                       "--photovaez-hidden", "16,16", "--timeout", "120", "--out", str(tmp_path)])
    assert rc == 1  # one estimator failed on purpose
    data = json.loads((tmp_path / "compare.json").read_text())
    res = data["results"]
    assert set(res) == {"trainZ/full", "NoSuchEstimator/full", "PhotoVAEz/full"}
    assert "unknown estimator" in res["NoSuchEstimator/full"]["error"]
    for name in ("trainZ", "PhotoVAEz"):  # the one after the failure ran too
        r = res[f"{name}/full"]
        assert "error" not in r, r.get("stderr_tail")
        assert r["n_estimated"] == 200 and r["n_labelled"] == 300
        for key in ("sigma_nmad", "cdeloss", "pit_ks", "outlier_rate", "inform_wall_s", "estimate_wall_s",
                    "peak_rss_mb"):
            assert math.isfinite(r[key]), (name, key)
    assert res["PhotoVAEz/full"]["n_unlabelled"] == 0  # scenario full has no unlabelled rows
    md = (tmp_path / "compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert {"estimator", "trainZ", "PhotoVAEz", "NoSuchEstimator"} <= set(rows)
    assert "full: sigma_NMAD" in rows["estimator"] and "full: peak RSS [MB]" in rows["estimator"]
    assert "failed: ValueError: unknown estimator" in rows["NoSuchEstimator"]
    assert "failed" not in rows["trainZ"] and "failed" not in rows["PhotoVAEz"]
