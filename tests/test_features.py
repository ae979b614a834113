import numpy as np
import pytest

from photovaez.features import (
    FeatureSpec,
    affine_map,
    clean_photometry,
    feature_matrix,
    feature_names,
    features,
    fit_scaler,
    preset,
)


def _table(n=5, **overrides):
    rng = np.random.default_rng(0)
    spec = FeatureSpec()
    t = {b: rng.uniform(20, 25, n) for b in spec.bands}
    t.update({e: rng.uniform(0.01, 0.1, n) for e in spec.err_bands})
    t.update(overrides)
    return t


def test_presets_have_documented_dimensions():
    assert preset("lsst").dim == 11
    assert preset("sdss_mgs").dim == 9
    assert preset("sdss_wise").dim == 23
    assert feature_names(preset("lsst"))[6] == "mag_u_lsst-mag_g_lsst"
    with pytest.raises(ValueError, match="unknown feature preset"):
        preset("nope")


def test_feature_matrix_builds_magnitudes_and_colours():
    spec = FeatureSpec(bands=["a", "b", "c"], err_bands=["ea", "eb", "ec"], extra_cols=["ext"])
    A = feature_matrix(spec)
    v = np.array([[20.0, 21.5, 23.0, 0.3]])
    raw = v @ A
    np.testing.assert_allclose(raw[0], [20.0, 21.5, 23.0, -1.5, -1.5, 0.3])


def test_nondetections_become_limits_with_error():
    spec = FeatureSpec()
    u = np.array([22.0, 99.0, np.nan, np.inf, -99.0, -9999.0])
    t = _table(6, mag_u_lsst=u)
    t["mag_err_u_lsst"] = np.array([0.05, 0.05, 0.05, np.nan, 0.05, 0.05])
    p = clean_photometry(t, spec)
    lim = spec.mag_limits["mag_u_lsst"]
    np.testing.assert_allclose(p.mags[:, 0], [22.0, lim, lim, lim, lim, lim])
    np.testing.assert_allclose(p.errs[:, 0], [0.05] + [spec.nondetect_err] * 5)
    np.testing.assert_array_equal(p.nondetect[:, 0], [False, True, True, True, True, True])
    assert not p.nondetect[:, 1:].any()


def test_custom_nondetect_value_and_nan_convention():
    spec = FeatureSpec(nondetect_val=-1.0)
    t = _table(3, mag_g_lsst=np.array([-1.0, 24.0, np.nan]))
    p = clean_photometry(t, spec)
    lim = spec.mag_limits["mag_g_lsst"]
    np.testing.assert_allclose(p.mags[:, 1], [lim, 24.0, lim])
    # float32 catalogues: 99 stored in float32 is still a non-detection
    t32 = _table(2, mag_g_lsst=np.array([99.0, 24.0], dtype=np.float32))
    assert clean_photometry(t32, FeatureSpec()).nondetect[:, 1].tolist() == [True, False]


def test_bad_errors_are_replaced_and_clipped():
    spec = FeatureSpec(replace_error_vals=[0.3] * 6, max_mag_err=0.5)
    t = _table(4)
    t["mag_err_r_lsst"] = np.array([-0.1, 0.0, np.nan, 3.0])
    p = clean_photometry(t, spec)
    np.testing.assert_allclose(p.errs[:, 2], [0.3, 0.3, 0.3, 0.5])


def test_missing_and_non_numeric_columns_are_named():
    t = _table(3)
    del t["mag_err_z_lsst"]
    with pytest.raises(KeyError, match="mag_err_z_lsst"):
        clean_photometry(t, FeatureSpec())
    t = _table(3, mag_i_lsst=np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="mag_i_lsst"):
        clean_photometry(t, FeatureSpec())


def test_extra_columns_must_be_finite():
    spec = FeatureSpec(extra_cols=["ebv"])
    t = _table(3, ebv=np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match="ebv"):
        clean_photometry(t, spec)


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="err_bands"):
        FeatureSpec(bands=["a", "b"], err_bands=["ea"])
    with pytest.raises(ValueError, match="colours"):
        FeatureSpec(bands=["a", "b"], err_bands=["ea", "eb"], colours=[["a", "q"]])
    with pytest.raises(ValueError, match="unknown keys"):
        FeatureSpec.from_dict({"bandz": ["a"]})


def test_standardisation_fitted_and_affine_map_consistent():
    spec = FeatureSpec()
    p = clean_photometry(_table(200), spec)
    sc = fit_scaler(p, spec)
    x = features(p, spec, sc)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(x.std(0), 1, rtol=1e-10)
    W, c = affine_map(spec, sc)
    # the colour u-g computed from magnitudes, standardised, equals the affine map's output
    ug = (p.mags[:, 0] - p.mags[:, 1] - sc.mean[6]) / sc.std[6]
    np.testing.assert_allclose((p.values @ W + c)[:, 6], ug)


def test_spec_round_trip_dict():
    spec = preset("sdss_wise")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_extra_columns_with_many_rows_and_bad_bands():
    """Regression: the extra-column check once reused the per-band ``bad`` list, so any spec with
    extra columns and more than one row failed; the extra column enters x unchanged (standardised)
    and the per-band bad-error flags survive."""
    spec = FeatureSpec(extra_cols=["ebv"])
    t = _table(50, ebv=np.linspace(0.0, 0.2, 50))
    t["mag_err_r_lsst"] = np.where(np.arange(50) == 3, -1.0, t["mag_err_r_lsst"])
    p = clean_photometry(t, spec)
    np.testing.assert_array_equal(p.extras[:, 0], t["ebv"])
    assert p.bad_error.shape == (50, 6) and p.bad_error[3, 2] and p.bad_error.sum() == 1
    x = features(p, spec, fit_scaler(p, spec))
    ebv = np.asarray(t["ebv"])
    np.testing.assert_allclose(x[:, -1], (ebv - ebv.mean()) / ebv.std())
