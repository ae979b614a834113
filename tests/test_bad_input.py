"""Bad input through the RAIL stages: each case gives a clear error naming what is wrong, or a
documented, flagged output (ancil ``n_nondetect``, ``n_bad_error``, ``pdf_flag``), never a
crash inside torch/JAX and never a silently wrong PDF.  The table of cases is in
docs/configuration.md ("Bad input and what you get").

Cases covered elsewhere: unknown config keys (test_stages.test_unknown_config_key and the ceci
command line), truncated / corrupt / foreign / newer-format model files (test_io and
test_stages.test_bad_models_refused), empty input and empty files (test_stages.test_empty_input).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tables_io
from rail.core.data import TableHandle

from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer

BANDS = [f"mag_{b}_lsst" for b in "ugrizy"]
ERRS = [f"mag_err_{b}_lsst" for b in "ugrizy"]
# no proposal fit nor posterior calibration: seconds per fit, tested in test_posterior / test_sed_recovery
TINY = dict(proposal_steps=0, calibrate_posterior=False,
            hidden=[16, 16], dim_a=3, dim_b=3, epochs=2, batch_size=64, min_epochs=1, device="cpu",
            hdf5_groupname="", output_mode="return")
EST = dict(device="cpu", n_b_samples=4, nzbins=151, output_mode="return")
_names = itertools.count()


def _name(prefix: str) -> str:
    return f"{prefix}_bad{next(_names)}"


@pytest.fixture(scope="module")
def data(dc2_tables):
    train, test = dc2_tables
    return ({k: np.asarray(v)[:300].copy() for k, v in train.items()},
            {k: np.asarray(v)[:8].copy() for k, v in test.items() if k != "redshift"})


@pytest.fixture(scope="module")
def model(data):
    return PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(data[0]).data


def _estimate(model, table, **kw):
    return PhotoVAEzEstimator.make_stage(name=_name("est"), model=model, **{**EST, **kw}).estimate(table).data


def _anc(ens, key):
    return np.ravel(np.asarray(ens.ancil[key]))


def _copy(table):
    return {k: np.array(v, copy=True) for k, v in table.items()}


def _assert_proper_pdfs(ens):
    y = np.asarray(ens.objdata["yvals"])
    z = np.ravel(ens.metadata["xvals"])
    assert np.isfinite(y).all() and (y >= 0).all()
    np.testing.assert_allclose(np.trapezoid(y, z, axis=1), 1.0, rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# errors that name the problem


@pytest.mark.parametrize("bad", [
    np.array(["24.1"] * 8),  # numbers as text: refused, not guessed
    np.array([b"24.1"] * 8),
    np.array([None] * 8, dtype=object),  # would otherwise read as NaN = "non-detection"
    np.ones(8, bool),
])
def test_wrong_dtype_is_named(model, data, bad):
    t = _copy(data[1])
    t["mag_g_lsst"] = bad
    with pytest.raises(TypeError, match=r"PhotoVAEzEstimator.*'mag_g_lsst'.*must hold numbers.*dtype"):
        _estimate(model, t)


def test_wrong_dtype_in_training_is_named(data):
    train = _copy(data[0])
    train["mag_err_r_lsst"] = np.array(["x"] * len(train["redshift"]))
    with pytest.raises(TypeError, match="'mag_err_r_lsst'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(train)
    train = _copy(data[0])
    train["redshift"] = train["redshift"].astype(str)
    with pytest.raises(TypeError, match="'redshift'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(train)


def test_integer_magnitudes_are_read_as_numbers(model, data):
    t = _copy(data[1])
    t["mag_g_lsst"] = np.round(t["mag_g_lsst"]).astype(np.int32)
    ref = _copy(data[1])
    ref["mag_g_lsst"] = np.round(ref["mag_g_lsst"]).astype(np.float64)
    np.testing.assert_array_equal(_estimate(model, t).objdata["yvals"], _estimate(model, ref).objdata["yvals"])


def test_missing_column_names_it_in_a_file_too(model, data, tmp_path):
    t = {k: v for k, v in data[1].items() if k != "mag_z_lsst"}
    path = str(tmp_path / "no_z.hdf5")
    tables_io.write({"photometry": t}, path)
    with pytest.raises(KeyError, match=r"PhotoVAEzEstimator.*'mag_z_lsst'.*missing"):
        _estimate(model, TableHandle("x", path=path), hdf5_groupname="photometry", output_mode="default",
                  output=str(tmp_path / "out.hdf5"))


def test_unlabelled_table_with_other_columns(data):
    train, test = data
    # extra columns are ignored; a missing feature column is named, with the table it is missing from
    unl = {**_copy(test), "some_flag": np.arange(8), "ra": np.zeros(8)}
    handle = PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(train, unl)
    assert handle.data["report"]["n_unlabelled"] == 8 - round(0.1 * 8)  # one held out for validation
    renamed = {k.replace("_lsst", "_hsc"): v for k, v in test.items()}
    with pytest.raises(KeyError, match=r"unlabelled table.*'mag_u_lsst'.*mag_u_hsc"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(train, renamed)


# ------------------------------------------------------------------------------------------------
# documented, flagged outputs


def test_nan_and_sentinel_magnitudes_are_flagged_non_detections(model, data):
    t = _copy(data[1])
    t["mag_u_lsst"][0] = 99.0
    t["mag_g_lsst"][1] = -9999.0
    t["mag_r_lsst"][2] = np.nan
    t["mag_i_lsst"][3] = np.inf
    t["mag_z_lsst"][3] = -np.inf
    ens = _estimate(model, t)
    _assert_proper_pdfs(ens)
    np.testing.assert_array_equal(_anc(ens, "n_nondetect"), [1, 1, 1, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(_anc(ens, "pdf_flag"), 0)
    # a non-detection is its limit with error nondetect_err, however it was written
    same = _copy(data[1])
    same["mag_u_lsst"][0] = np.nan
    same["mag_g_lsst"][1] = 99.0
    same["mag_r_lsst"][2] = -9999.0
    same["mag_i_lsst"][3] = 99.0
    same["mag_z_lsst"][3] = np.nan
    np.testing.assert_array_equal(_estimate(model, same).objdata["yvals"], ens.objdata["yvals"])


@pytest.mark.parametrize("value", [np.nan, 99.0, -9999.0])
def test_rows_without_any_detection_get_pdf_flag_2(model, data, value):
    t = _copy(data[1])
    for b, e in zip(BANDS, ERRS):
        t[b][[2, 5]] = value
        t[e][[2, 5]] = np.nan if np.isnan(value) else t[e][[2, 5]]
    ens = _estimate(model, t)
    _assert_proper_pdfs(ens)
    np.testing.assert_array_equal(_anc(ens, "pdf_flag"), [0, 0, 2, 0, 0, 2, 0, 0])
    np.testing.assert_array_equal(_anc(ens, "n_nondetect"), [0, 0, 6, 0, 0, 6, 0, 0])
    # the other rows are untouched by their neighbours
    clean = _estimate(model, data[1])
    keep = [0, 1, 3, 4, 6, 7]
    np.testing.assert_array_equal(np.asarray(ens.objdata["yvals"])[keep], np.asarray(clean.objdata["yvals"])[keep])


@pytest.mark.parametrize("posterior", ["amortized", "snis"])
def test_negative_or_nan_errors_are_replaced_and_counted(model, data, posterior):
    kw = dict(posterior=posterior, n_importance=16, n_importance_px=16) if posterior != "amortized" else {}
    t = _copy(data[1])
    t["mag_err_g_lsst"][0] = -0.05
    t["mag_err_r_lsst"][1] = np.nan
    t["mag_err_i_lsst"][1] = 0.0
    t["mag_err_z_lsst"][2] = np.inf
    ens = _estimate(model, t, **kw)
    _assert_proper_pdfs(ens)
    np.testing.assert_array_equal(_anc(ens, "n_bad_error"), [1, 2, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(_anc(ens, "pdf_flag"), 0)
    # the replaced error is replace_error_vals: the same PDF as that value written in the table
    same = _copy(data[1])
    for col in ("mag_err_g_lsst", "mag_err_r_lsst", "mag_err_i_lsst", "mag_err_z_lsst"):
        same[col] = same[col].astype(np.float64)  # 0.1 exactly (float32 would hold 0.1000000015)
    same["mag_err_g_lsst"][0] = 0.1  # RAIL's default replace_error_vals
    same["mag_err_r_lsst"][1] = same["mag_err_i_lsst"][1] = same["mag_err_z_lsst"][2] = 0.1
    ref = _estimate(model, same, **kw)
    np.testing.assert_array_equal(np.asarray(ens.objdata["yvals"]), np.asarray(ref.objdata["yvals"]))
    np.testing.assert_array_equal(_anc(ref, "n_bad_error"), 0)


def test_chunks_of_one_row(model, data, tmp_path):
    whole = _estimate(model, data[1])
    one = _estimate(model, {k: v[3:4] for k, v in data[1].items()})
    assert one.npdf == 1
    z = np.linspace(0.0, 3.0, 151)
    np.testing.assert_allclose(one.pdf(z).reshape(-1), whole.pdf(z)[3], rtol=1e-5, atol=1e-8)
    assert _anc(one, "zmode")[0] == pytest.approx(_anc(whole, "zmode")[3], rel=1e-5)
    # a file read in chunks of one row: every row, in order
    path = str(tmp_path / "test.hdf5")
    tables_io.write({"photometry": data[1]}, path)
    ens = _estimate(model, TableHandle("x", path=path), hdf5_groupname="photometry", chunk_size=1,
                    output_mode="default", output=str(tmp_path / "out1.hdf5"))
    assert ens.npdf == 8
    np.testing.assert_allclose(np.asarray(ens.objdata["yvals"]), np.asarray(whole.objdata["yvals"]),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(_anc(ens, "zmode"), _anc(whole, "zmode"), rtol=1e-5)


def test_labelled_rows_with_bad_redshift_become_unlabelled(data, caplog):
    train = _copy(data[0])
    train["redshift"] = train["redshift"].astype(np.float64)
    train["redshift"][:10] = np.nan
    train["redshift"][10:15] = -1.0
    train["redshift"][15:17] = 0.0
    train["redshift"][17] = np.inf
    with caplog.at_level("WARNING", logger="photovaez"):
        report = PhotoVAEzInformer.make_stage(name=_name("inf"), **TINY).inform(train).data["report"]
    assert report["n_labelled"] + report["n_unlabelled"] + report["n_validation"] == 300
    # the 18 bad rows are unlabelled; 10 % of each kind is held out for validation
    assert report["n_unlabelled"] == 18 - round(0.1 * 18)
    assert report["n_labelled"] == 282 - round(0.1 * 282)
    assert any("18 training rows" in r.getMessage() for r in caplog.records)
