"""The comparison harness (rail.photovaez.compare) through benchmarks/compare.py on a tiny subset:
one subprocess per estimator, failures and time-outs isolated.

Only estimators of rail_base (trainZ) and PhotoVAEz itself are required (CI installs ``.[test]``).
"""

import importlib.util
import json
import math
import os
import time

import numpy as np
import pytest
import tables_io

from rail.photovaez import cli
from rail.photovaez import compare as cmp

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
                       "--photovaez-hidden", "16,16", "--photovaez-no-posterior-tools", "--timeout", "120",
                       "--out", str(tmp_path)])
    assert rc == 1  # one estimator failed on purpose
    data = json.loads((tmp_path / "compare.json").read_text())
    res = data["results"]
    assert set(res) == {"full"} and set(res["full"]) == {"trainZ", "NoSuchEstimator", "PhotoVAEz"}
    res = res["full"]
    assert "unknown estimator" in res["NoSuchEstimator"]["error"]
    for name in ("trainZ", "PhotoVAEz"):  # the one after the failure ran too
        r = res[name]
        assert "error" not in r, r.get("stderr_tail")
        assert r["n_estimated"] == 200 and r["n_labelled"] == 300
        for key in ("sigma_nmad", "cdeloss", "pit_ks", "outlier_rate", "inform_wall_s", "estimate_wall_s",
                    "peak_rss_mb"):
            assert math.isfinite(r[key]), (name, key)
    assert res["PhotoVAEz"]["n_unlabelled"] == 0  # scenario full has no unlabelled rows
    md = (tmp_path / "compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert {"estimator", "trainZ", "PhotoVAEz", "NoSuchEstimator"} <= set(rows)
    assert "full: sigma_NMAD" in rows["estimator"] and "full: peak RSS [MB]" in rows["estimator"]
    assert "failed: ValueError: unknown estimator" in rows["NoSuchEstimator"]
    assert "failed" not in rows["trainZ"] and "failed" not in rows["PhotoVAEz"]


# ------------------------------------------------------------------------------------------------
# `photovaez compare` on files, and the pieces of rail.photovaez.compare


@pytest.fixture
def cmp_files(tmp_path, dc2_tables):
    train, test = dc2_tables
    train = {k: np.asarray(v)[:300].copy() for k, v in train.items()}
    train["redshift"] = train["redshift"].astype(np.float64)
    train["redshift"][:60] = np.nan  # unlabelled rows: PhotoVAEz only
    tables_io.write({"photometry": train}, str(tmp_path / "train.hdf5"))
    tables_io.write({"photometry": {k: np.asarray(v)[:150] for k, v in test.items()}}, str(tmp_path / "test.hdf5"))
    return tmp_path


def test_cli_compare_semi_supervised_split(cmp_files, capsys):
    d = cmp_files
    rc = cli.main(["compare", str(d / "train.hdf5"), str(d / "test.hdf5"), "--out", str(d / "cmp"),
                   "--estimators", "trainZ,PhotoVAEz", "--nzbins", "151", "--timeout", "300",
                   "--set", "PhotoVAEz.epochs=2", "--set", "PhotoVAEz.hidden=[16,16]",
                   "--set", "PhotoVAEz.device=cpu", "--set", "PhotoVAEz.proposal_steps=0",
                   "--set", "PhotoVAEz.calibrate_posterior=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads((d / "cmp" / "compare.json").read_text())["results"]
    for name in ("trainZ", "PhotoVAEz"):
        r = res[name]
        assert "error" not in r, r.get("stderr_tail")
        assert r["n_labelled"] == 240 and r["n_estimated"] == 150 and r["grid"] == [0.0, 3.0, 151]
    assert res["trainZ"]["n_unlabelled"] == 0 and res["PhotoVAEz"]["n_unlabelled"] == 60
    assert res["PhotoVAEz"]["options"]["epochs"] == 2 and res["PhotoVAEz"]["options"]["hidden"] == [16, 16]
    assert res["PhotoVAEz"]["zmode_source"] == "ancil"
    # trainZ's PDF is the training n(z) for every galaxy: the scatter of a constant guess
    assert res["trainZ"]["sigma_nmad"] > 0.1
    assert "| trainZ |" in out and "| PhotoVAEz |" in out and "sigma_NMAD" in out


@pytest.mark.parametrize("extra, words", [
    (["--estimators", "NoSuch"], ["unknown estimators", "NoSuch", "--estimators"]),
    (["--redshift-col", "zspec"], ["'zspec'", "--redshift-col"]),
    (["--bands", "mag_u_lsst,mag_nope", "--err-bands", "mag_err_u_lsst,mag_err_g_lsst"], ["'mag_nope'", "--bands"]),
    (["--bands", "mag_u_lsst", "--err-bands", "a,b"], ["err_bands", "one error column per band"]),
    (["--set", "Nope.k=1"], ["unknown estimator 'Nope'"]),
    (["--zmin", "2", "--zmax", "1"], ["zmax > zmin"]),
])
def test_cli_compare_errors(cmp_files, capsys, extra, words):
    d = cmp_files
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", str(d / "train.hdf5"), str(d / "test.hdf5"), "--out", str(d / "cmp"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_timeout_is_reported_not_raised(dc2_tables):
    train, test = dc2_tables
    res = cmp.compare(train, test, estimators=["PhotoVAEz"], timeout=0.5)  # importing torch alone takes longer
    assert res["PhotoVAEz"]["error"].startswith("timed out after")


def test_labelled_and_unlabelled_and_shared_options():
    t = {"redshift": np.array([0.5, np.nan, -1.0, 1.2, 0.0]), "m": np.arange(5.0)}
    lab, unl = cmp.labelled_and_unlabelled(t, "redshift")
    np.testing.assert_array_equal(lab["m"], [0.0, 3.0])
    np.testing.assert_array_equal(unl["m"], [1.0, 2.0, 4.0])
    assert "redshift" not in unl
    # a second unlabelled table is appended on the common columns, its redshifts dropped
    extra = {"m": np.array([7.0, 8.0]), "redshift": np.array([0.3, 0.4]), "other": np.zeros(2)}
    _, unl = cmp.labelled_and_unlabelled(t, "redshift", extra)
    assert set(unl) == {"m"}
    np.testing.assert_array_equal(unl["m"], [1.0, 2.0, 4.0, 7.0, 8.0])
    lab, unl = cmp.labelled_and_unlabelled({"redshift": np.array([0.1, 0.2]), "m": np.zeros(2)}, "redshift")
    assert unl is None and len(lab["m"]) == 2
    _, unl = cmp.labelled_and_unlabelled({"redshift": np.array([0.1]), "m": np.zeros(1)}, "redshift", extra)
    assert set(unl) == {"m", "other"}  # no unlabelled rows of its own: the second table as it is
    with pytest.raises(ValueError, match="no labelled rows"):
        cmp.labelled_and_unlabelled({"redshift": np.array([np.nan]), "m": np.zeros(1)}, "redshift")
    o = cmp.shared_options(redshift_col="zs", zmin=0.0, zmax=0.4, nzbins=201, bands=["u", "g"],
                           err_bands=["eu", "eg"], ref_band="g")
    assert o["dz"] == pytest.approx(0.002) and o["err_dict"] == {"u": "eu", "g": "eg", "zs": None}
    assert o["column_names"] == ["u", "g"] and o["err_names_dict"] == {"eu": "u_err", "eg": "g_err"}
    from rail.estimation.algos.train_z import TrainZEstimator

    kept = cmp.stage_config(TrainZEstimator, {**o, "not_an_option": 1})
    assert "not_an_option" not in kept and kept["zmax"] == 0.4


def test_run_subprocess_kills_the_process_group_on_timeout():
    """A worker that forks: after the time-out neither it nor its child is left running."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to see the child process")

    rc, err, timed_out = cmp.run_subprocess(["sh", "-c", "sleep 60 & echo $! >&2; wait"], timeout=1.0)
    assert timed_out and rc == -9
    child = int(err.split()[0])

    def running(pid: int) -> bool:  # a zombie (killed, not yet reaped) does not run
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    for _ in range(50):
        if not running(child):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child {child} of the timed-out worker still runs")
    rc, err, timed_out = cmp.run_subprocess(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=None)
    assert (rc, err.strip(), timed_out) == (3, "err", False)


def test_format_cell():
    assert cmp.format_cell(0.123456, "{:.3f}") == "0.123" and cmp.format_cell(None, "{:.3f}") == ""
    assert cmp.format_cell("n/a", "{:.3f}") == "n/a"
