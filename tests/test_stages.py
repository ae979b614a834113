"""The RAIL stages: PhotoVAEzInformer, PhotoVAEzEstimator and PhotoVAEzModelHandle.

Tiny networks and a few epochs on a few hundred DC2 galaxies keep the whole file at a few
seconds on two cores; the assertions are about the plumbing (data, configuration, files,
chunking, reproducibility), not about photo-z quality.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import qp
import tables_io
from rail.core.data import TableHandle
from rail.core.enums import DistributionType

from rail.estimation.algos.photovaez import (
    PhotoVAEzEstimator,
    PhotoVAEzInformer,
    PhotoVAEzModelHandle,
)

# no proposal fit nor posterior calibration: seconds per fit, tested in test_posterior / test_sed_recovery
TINY = dict(proposal_steps=0, calibrate_posterior=False,
            hidden=[32, 32], dim_a=4, dim_b=4, epochs=2, batch_size=64, min_epochs=1, device="cpu",
            hdf5_groupname="")
EST = dict(device="cpu", n_b_samples=8, nzbins=151)
ANCIL = {"zmode", "zmean", "zmedian", "n_nondetect", "n_bad_error", "pdf_flag"}

_counter = iter(range(10**6))


def _name(prefix: str) -> str:
    # stage instance names must differ: RAIL keeps one output alias per name
    return f"{prefix}{next(_counter)}"


def _rows(table: dict, sl: slice) -> dict:
    return {k: np.asarray(v)[sl] for k, v in table.items()}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: these networks are tiny, and on a busy two-core machine a second
    thread makes each optimiser step ~10x slower (thread hand-off), not faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tables(dc2_tables):
    train, test = dc2_tables
    return _rows(train, slice(0, 300)), _rows(test, slice(0, 120))


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory):
    """One tiny model, trained once, written to a file: (model handle, file path)."""
    path = str(tmp_path_factory.mktemp("model") / "model.pkl")
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), model=path, **TINY)
    handle = stage.inform(tables[0])
    return handle, path


@pytest.fixture(scope="module")
def test_file(tables, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "test.hdf5")
    tables_io.write({"photometry": tables[1]}, path)
    return path


def _estimate(model, data, **config):
    stage = PhotoVAEzEstimator.make_stage(name=_name("est"), model=model, **{**EST, **config})
    return stage.estimate(data).data


def _ancil(ens, key):
    return np.squeeze(np.asarray(ens.ancil[key]))


# --------------------------------------------------------------------------------------------
# discovery, configuration


def test_light_import_and_discovery():
    """Importing the stage module pulls in neither torch nor jax, and RAIL's discovery attaches
    both stages to rail.stages (run in a fresh interpreter)."""
    code = (
        "import sys\n"
        "import rail.estimation.algos.photovaez\n"
        "heavy = [m for m in ('torch', 'jax', 'numpyro') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import rail.stages\n"
        "rail.stages.import_and_attach_all(silent=True)\n"
        "from rail.stages import PhotoVAEzInformer, PhotoVAEzEstimator\n"
        "import rail.photovaez, photovaez\n"
        "assert rail.photovaez.__version__ == photovaez.__version__\n"
        "assert rail.photovaez.PhotoVAEzEstimator is PhotoVAEzEstimator\n"
        "assert 'PhotoVAEzInformer' in rail.stages.__all__\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")


def test_stage_options_are_the_core_configuration():
    """Every user-facing field of ModelConfig/TrainConfig/EstimateConfig is a stage option whose value
    reaches the core config; RAIL's own checks of the parameters pass."""
    from rail.utils.testing_utils import check_stage_params

    from photovaez.config import EstimateConfig, ModelConfig, TrainConfig, options

    assert check_stage_params(PhotoVAEzInformer) is None
    assert check_stage_params(PhotoVAEzEstimator) is None
    inf = PhotoVAEzInformer.make_stage(name=_name("inf"), epochs=7, hidden=[8, 4], x_logvar_min=-5.0,
                                       zmax=2.5, nzbins=251, resample=False)
    tc, mc = inf.train_config, inf.model_config
    assert (tc.epochs, tc.zmax, tc.nzbins, tc.resample) == (7, 2.5, 251, False)
    assert (mc.hidden, mc.x_logvar_min) == ([8, 4], -5.0)
    assert tc.progress is False and TrainConfig().progress is True  # no progress bar in pipeline logs
    for cls, stage in ((ModelConfig, PhotoVAEzInformer), (TrainConfig, PhotoVAEzInformer),
                       (EstimateConfig, PhotoVAEzEstimator)):
        for o in options(cls):
            assert o.name in stage.config_options, (cls.__name__, o.name)
            assert stage.config_options[o.name].msg == o.help
    assert "dim_x" not in PhotoVAEzInformer.config_options  # set from the features, not by users
    assert "n_bands" not in PhotoVAEzInformer.config_options and "reference_band_index" not in \
        PhotoVAEzInformer.config_options
    # the physics decoder's options (issue 10) through the stage
    sed = PhotoVAEzInformer.make_stage(name=_name("inf"), decoder="mlp", templates="cwwsb4", n_correction=4,
                                       zero_points=True, redshift_prior="bpz", prior_band="mag_r_lsst",
                                       filters=[f"lsst2023-{b}" for b in "ugrizy"], sed_uses_b=True)
    mc = sed.model_config
    assert (mc.decoder, mc.templates, mc.n_correction, mc.zero_points, mc.prior, mc.prior_band, mc.sed_uses_b) == \
        ("mlp", "cwwsb4", 4, True, "bpz", "mag_r_lsst", True)
    assert mc.filters == [f"lsst2023-{b}" for b in "ugrizy"] and ModelConfig().decoder == "sed"
    assert PhotoVAEzEstimator.default_distribution_type() == DistributionType.posterior


def test_informer_takes_rail_shared_grid_options(tables):
    """One dict of shared options, as pipelines pass to every informer (trainZ, KNN, FlexZBoost ...),
    works for PhotoVAEz: zmin/zmax/nzbins set the calibration range and are recorded in the model."""
    from rail.estimation.algos.train_z import TrainZInformer

    shared = dict(zmin=0.0, zmax=3.0, nzbins=301, hdf5_groupname="")
    TrainZInformer.make_stage(name=_name("tz"), **shared)
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), **{**TINY, **shared, "zmax": 2.0, "nzbins": 201})
    model = stage.inform(tables[0]).data
    assert (model["train_config"]["zmin"], model["train_config"]["zmax"], model["train_config"]["nzbins"]) == \
        (0.0, 2.0, 201)
    with pytest.raises(ValueError, match="unknown configuration option.*'zmaxx'.*did you mean 'zmax'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), zmin=0, zmax=3, nzbins=301, zmaxx=3)
    with pytest.raises(ValueError, match="invalid redshift range"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), **{**TINY, "zmin": 1.0, "zmax": 0.5})


@pytest.mark.parametrize("cls,key,suggestion", [
    (PhotoVAEzInformer, "epocs", "epochs"),
    (PhotoVAEzInformer, "hiden", "hidden"),
    (PhotoVAEzEstimator, "n_b_sampels", "n_b_samples"),
])
def test_unknown_config_key(cls, key, suggestion):
    with pytest.raises(ValueError, match=key) as err:
        cls.make_stage(name=_name("bad"), **{key: 3})
    assert repr(suggestion) in str(err.value)
    assert cls.name in str(err.value)


def test_unknown_key_under_ceci_command_line(tmp_path):
    """Built the way ``ceci`` builds a stage (command-line namespace + config file): ceci's own
    keys, input/output tags and the file's ``global`` section are accepted; a typo in the
    stage's section is not."""
    import yaml

    cfg = {"global": {"chunk_size": 100, "shared_by_other_stages": 1}, "est": {"n_b_samples": 4}}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = ["rail.estimation.algos.photovaez.PhotoVAEzEstimator", "--model=m.pkl", "--input=in.hdf5",
           "--name=est", f"--config={path}", "--output=out.hdf5"]
    stage = PhotoVAEzEstimator(PhotoVAEzEstimator.parse_command_line(cmd))
    assert stage.config.n_b_samples == 4 and stage.config.chunk_size == 100
    cfg["est"]["nzbin"] = 11
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="'nzbin' \\(did you mean 'nzbins'\\?\\)"):
        PhotoVAEzEstimator(PhotoVAEzEstimator.parse_command_line(cmd))


def test_ref_band_and_mag_limits_checked():
    with pytest.raises(ValueError, match="ref_band 'mag_q_lsst' is not one of bands"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), ref_band="mag_q_lsst")
    bands = ["mag_g_lsst", "mag_r_lsst", "mag_i_lsst"]
    errs = ["mag_err_g_lsst", "mag_err_r_lsst", "mag_err_i_lsst"]
    with pytest.raises(ValueError, match="mag_limits has no limiting magnitude for \\['mag_g_lsst'\\]"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), bands=bands, err_bands=errs, replace_error_vals=[0.1] * 3,
                                     mag_limits={"mag_r_lsst": 28.0, "mag_i_lsst": 28.0})
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), bands=bands, err_bands=errs, replace_error_vals=[0.1] * 3,
                                         mag_limits={b: 28.0 for b in bands}, only_ref_mag=True)
    spec = stage.feature_spec
    assert spec.mag_features == ["mag_i_lsst"] and spec.colours == [bands[:2], bands[1:]] and spec.dim == 3


# --------------------------------------------------------------------------------------------
# inform + estimate


def test_round_trip_pdfs_and_ancil(trained, test_file, tmp_path):
    handle, path = trained
    assert isinstance(handle, PhotoVAEzModelHandle) and os.path.isfile(path)
    report = handle.data["report"]
    assert report["n_labelled"] > 0 and report["epochs_run"] == TINY["epochs"]
    out = str(tmp_path / "out.hdf5")
    ens = _estimate(path, TableHandle("test", path=test_file), hdf5_groupname="photometry", output=out)
    assert os.path.isfile(out)
    assert ens.npdf == 120 and ens.gen_class is qp.interp_gen
    zgrid = np.linspace(0.0, 3.0, EST["nzbins"])
    np.testing.assert_array_equal(ens.metadata["xvals"], zgrid)
    pdfs = ens.pdf(zgrid)
    assert np.all(np.isfinite(pdfs)) and np.all(pdfs >= 0)
    np.testing.assert_allclose(np.trapezoid(pdfs, zgrid, axis=1), 1.0, atol=1e-6)
    assert ANCIL <= set(ens.ancil)
    assert np.all(_ancil(ens, "distribution_type") == DistributionType.posterior.value)
    zmode = _ancil(ens, "zmode")
    assert np.all((zmode >= 0) & (zmode <= 3))
    # the ancil's mode is the PDF's grid maximum (refined by at most half a cell)
    np.testing.assert_allclose(zmode, zgrid[np.argmax(pdfs, axis=1)], atol=0.5 * (zgrid[1] - zgrid[0]) + 1e-12)
    np.testing.assert_array_equal(_ancil(ens, "redshift"), tables_io.read(test_file)["photometry"]["redshift"])


def test_chunked_equals_single_chunk(trained, test_file, tmp_path):
    """chunk_size=50 (3 chunks) and one chunk give the same PDFs and ancil.

    The b draws are fixed by the seed and shared by all galaxies, so the algorithm is
    chunk-independent; the numbers agree to float32 rounding, not bit for bit, because
    PyTorch's CPU kernels (vectorised exp/softplus tails, gemm/gemv choice) round differently
    for different batch sizes."""
    _, path = trained
    data = TableHandle("test", path=test_file)
    a = _estimate(path, data, hdf5_groupname="photometry", chunk_size=50, output=str(tmp_path / "a.hdf5"))
    b = _estimate(path, data, hdf5_groupname="photometry", chunk_size=10_000, output=str(tmp_path / "b.hdf5"))
    assert a.npdf == b.npdf == 120
    ya, yb = a.objdata["yvals"], b.objdata["yvals"]
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6 * yb.max())
    for key in ("zmode", "zmean", "zmedian"):
        np.testing.assert_allclose(_ancil(a, key), _ancil(b, key), rtol=0, atol=1e-5)
    for key in ("n_nondetect", "pdf_flag", "redshift"):
        np.testing.assert_array_equal(_ancil(a, key), _ancil(b, key))


def test_model_from_path_handle_and_dict_agree(trained, tables):
    handle, path = trained
    test = tables[1]
    from_path = _estimate(path, test, output_mode="return")
    from_handle = _estimate(handle, test, output_mode="return")
    from_dict = _estimate(dict(handle.data), test, output_mode="return")
    from_plain_handle = _estimate(PhotoVAEzModelHandle("m", path=path), test, output_mode="return")
    for other in (from_handle, from_dict, from_plain_handle):
        np.testing.assert_array_equal(from_path.objdata["yvals"], other.objdata["yvals"])
        for key in ANCIL:
            np.testing.assert_array_equal(_ancil(from_path, key), _ancil(other, key))


def test_seed_reproduces_model_exactly(trained, tables):
    handle, _ = trained
    again = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", **TINY).inform(tables[0]).data
    other = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", **{**TINY, "seed": 1}).inform(
        tables[0]).data
    state = handle.data["state"]
    assert set(again["state"]) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(again["state"][key], value)
    assert any(not np.array_equal(other["state"][k], v) for k, v in state.items())


def test_bad_redshifts_are_unlabelled(tables):
    train = _rows(tables[0], slice(None))
    train["redshift"] = train["redshift"].astype(np.float64)
    train["redshift"][:40] = np.nan
    train["redshift"][40:55] = -1.0
    train["redshift"][55:60] = 0.0
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", validation_fraction=0.0,
                                         **TINY)
    report = stage.inform(train).data["report"]
    assert report["n_unlabelled"] == 60 and report["n_labelled"] == 240


def test_unlabeled_input_is_used(tables, dc2_tables, tmp_path):
    unl = _rows(dc2_tables[0], slice(300, 350))
    del unl["redshift"]
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", validation_fraction=0.0,
                                         **TINY)
    report = stage.inform(tables[0], unlabeled_data=unl).data["report"]
    assert report["n_labelled"] == 300 and report["n_unlabelled"] == 50
    # from a file, through the 'unlabeled' tag as a pipeline would set it
    path = str(tmp_path / "unl.hdf5")
    tables_io.write({"photometry": unl}, path)
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", validation_fraction=0.0,
                                         unlabeled=path, **{**TINY, "hdf5_groupname": "photometry"})
    report = stage.inform({"photometry": tables[0]}).data["report"]
    assert report["n_unlabelled"] == 50


def test_missing_column_names_it(trained, tables):
    train = {k: v for k, v in tables[0].items() if k != "mag_g_lsst"}
    with pytest.raises(KeyError, match="PhotoVAEzInformer.*'mag_g_lsst'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", **TINY).inform(train)
    train = {k: v for k, v in tables[0].items() if k != "redshift"}
    with pytest.raises(KeyError, match="'redshift'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", **TINY).inform(train)
    unl = {k: v for k, v in tables[1].items() if k != "mag_err_y_lsst"}
    with pytest.raises(KeyError, match="unlabelled table.*'mag_err_y_lsst'"):
        PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", **TINY).inform(tables[0], unl)
    test = {k: v for k, v in tables[1].items() if k != "mag_err_r_lsst"}
    with pytest.raises(KeyError, match="PhotoVAEzEstimator.*'mag_err_r_lsst'"):
        _estimate(trained[0], test, output_mode="return")


def test_empty_input(trained, tables, tmp_path):
    _, path = trained
    empty = _rows(tables[1], slice(0, 0))
    in_memory = _estimate(path, empty, output_mode="return")
    assert in_memory.npdf == 0
    fname = str(tmp_path / "empty.hdf5")
    tables_io.write({"photometry": empty}, fname)
    from_file = _estimate(path, TableHandle("e", path=fname), hdf5_groupname="photometry",
                          output=str(tmp_path / "out_empty.hdf5"))
    assert from_file.npdf == 0 and ANCIL <= set(from_file.ancil)


def test_bad_models_refused(tables, tmp_path):
    from photovaez.io import ModelFileError

    with pytest.raises(ModelFileError, match="PhotoVAEzEstimator.*not a PhotoVAEz model"):
        _estimate({"format": "something-else"}, tables[1], output_mode="return")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(TableHandle))  # any class or function must be refused
    with pytest.raises(ModelFileError, match="refusing to load"):
        _estimate(str(evil), tables[1], output_mode="return")
    with pytest.raises(ValueError, match="no model given"):
        PhotoVAEzEstimator.make_stage(name=_name("est"), **EST).estimate(tables[1])


def test_rail_interactive_functions(tables):
    """rail.interactive builds photovaez_informer / photovaez_estimator from the stages; it passes
    force_exact and the entrypoint arguments to make_stage, which the strict config check allows.
    RAIL marks every ceci input as required, hence unlabeled_data="none"."""
    import rail.interactive as ri

    mod = ri.estimation.algos.photovaez
    model = mod.photovaez_informer(training_data=tables[0], unlabeled_data="none", **TINY)["model"]
    assert model["report"]["n_unlabelled"] == 0
    ens = mod.photovaez_estimator(input_data=tables[1], model=model, **EST, hdf5_groupname="")["output"]
    assert ens.npdf == 120
    with pytest.raises(ValueError, match="'nzbin'"):
        mod.photovaez_estimator(input_data=tables[1], model=model, nzbin=3, hdf5_groupname="")


def test_unlabeled_data_as_path(tables, dc2_tables, tmp_path):
    unl = _rows(dc2_tables[0], slice(300, 330))
    path = tmp_path / "unl.hdf5"
    tables_io.write(unl, str(path))  # flat file, no group: found without hdf5_groupname
    stage = PhotoVAEzInformer.make_stage(name=_name("inf"), output_mode="return", validation_fraction=0.0,
                                         **{**TINY, "hdf5_groupname": "photometry"})
    report = stage.inform({"photometry": tables[0]}, unlabeled_data=path).data["report"]
    assert report["n_unlabelled"] == 30 and report["n_labelled"] == 300


# ------------------------------------------------------------------------------------------
# posterior modes


@pytest.mark.parametrize("mode", ["grid", "hmc", "snis", "joint", "auto"])
def test_posterior_modes_in_the_stage_are_chunk_invariant(trained, tables, mode):
    """Each posterior mode gives normalised PDFs with log_px (and the HMC diagnostics), and the
    same result whether the galaxies come in one chunk or several."""
    extra = {"hmc": dict(hmc_num_warmup=60, hmc_num_samples=60, hmc_max_tree_depth=4),
             "joint": dict(hmc_num_warmup=30, hmc_num_samples=30, n_chains=2),
             # every galaxy checked against the posterior, those beyond the labels' median score switched
             "auto": dict(auto_check_quantile=0.0, auto_support_quantile=0.5)}.get(mode, {})
    table = _rows(tables[1], slice(0, 12))
    out = []
    for chunk in (100, 5):
        est = PhotoVAEzEstimator.make_stage(name=_name("est"), model=trained[0].data, posterior=mode,
                                            n_importance=16, n_importance_px=16, chunk_size=chunk,
                                            hdf5_groupname="", output_mode="return", **extra)
        out.append(est.estimate(table).data)
    a, b = out
    zg = np.ravel(a.metadata["xvals"])
    np.testing.assert_allclose(np.trapezoid(a.objdata["yvals"], zg, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(a.objdata["yvals"], b.objdata["yvals"], rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(np.ravel(a.ancil["log_px"])))
    if mode == "hmc":
        assert {"divergences", "ess"} <= set(a.ancil)
    if mode == "joint":
        assert {"divergences", "rhat", "ess"} <= set(a.ancil)
    if mode == "auto":
        reason = np.ravel(a.ancil["auto_reason"])
        assert np.any(reason == 3) and np.all(reason >= 1), reason
        np.testing.assert_array_equal(reason, np.ravel(b.ancil["auto_reason"]))


def test_unknown_posterior_mode_is_named(trained):
    with pytest.raises(ValueError, match="posterior='gird'.*did you mean 'grid'"):
        PhotoVAEzEstimator.make_stage(name=_name("est"), model=trained[1], posterior="gird")


def test_amortised_mode_can_report_log_px(trained, tables):
    """n_importance_px > 0 adds the IWAE log p(x) to the amortised output; +2 mag in i lowers it."""
    table = _rows(tables[1], slice(0, 40))
    bad = dict(table, mag_i_lsst=np.asarray(table["mag_i_lsst"]) + 2.0)
    lp = []
    for t in (table, bad):
        est = PhotoVAEzEstimator.make_stage(name=_name("est"), model=trained[0].data, n_importance_px=32,
                                            hdf5_groupname="", output_mode="return")
        lp.append(_ancil(est.estimate(t).data, "log_px"))
    assert np.all(np.isfinite(lp[0])) and np.mean(lp[1] < lp[0]) > 0.8


# --------------------------------------------------------------------------------------------
# feature sets with extra columns


def _sdss_wise_table(n: int, seed: int) -> dict:
    """A synthetic table with the 23-feature ``sdss_wise`` columns (no real SDSS+WISE catalogue
    with spectroscopic redshifts is at hand): colours that redden smoothly with z, psf magnitudes
    fainter than model ones, an i-band extinction, a few W2 non-detections (99)."""
    from photovaez.features import SDSS_WISE_MODEL, SDSS_WISE_PSF, SDSS_WISE_WISE

    rng = np.random.default_rng(seed)
    z = rng.uniform(0.02, 0.4, n)
    r = rng.uniform(15.0, 17.7, n)
    colour = {"u": 1.2 + 4 * z, "g": 0.5 + 2.5 * z, "r": 0.0 * z, "i": -0.3 - 1.2 * z, "z": -0.5 - 1.8 * z,
              "w1": -1.5 - 2.0 * z, "w2": -1.8 - 1.5 * z}  # m_band - m_r
    t: dict[str, np.ndarray] = {"redshift": z, "extinction_i": rng.uniform(0.0, 0.15, n)}
    names = dict(zip("ugriz", SDSS_WISE_MODEL)) | dict(zip(("w1", "w2"), SDSS_WISE_WISE))
    for band, col in names.items():
        t[col] = r + colour[band] + rng.normal(0, 0.03, n)
        t[col + "_err"] = rng.uniform(0.01, 0.06, n)
    for band, col in zip("ugriz", SDSS_WISE_PSF):
        t[col] = t[names[band]] + 0.4 + rng.normal(0, 0.03, n)
        t[col + "_err"] = rng.uniform(0.01, 0.06, n)
    t["w2mpro"][rng.random(n) < 0.05] = 99.0
    return t


def test_sdss_wise_preset_through_both_stages():
    """The draft's 23-feature set (with the extra column extinction_i) trains and estimates end to
    end; the photo-z follow the synthetic colour-redshift relation; a table without the extra
    column is refused by name."""
    from scipy.stats import spearmanr

    train, test = _sdss_wise_table(800, 1), _sdss_wise_table(200, 2)
    opts = dict(TINY, feature_preset="sdss_wise", epochs=25, hidden=[64, 64], zmax=0.6, nzbins=121)
    model = PhotoVAEzInformer.make_stage(name=_name("inf"), **opts).inform(train).data
    assert model["model_config"]["dim_x"] == 23
    assert model["feature_spec"]["extra_cols"] == ["extinction_i"]
    ens = _estimate(model, test, zmax=0.6, nzbins=121, output_mode="return")
    assert ens.npdf == 200 and np.all(np.isfinite(ens.objdata["yvals"]))
    assert _ancil(ens, "n_nondetect").sum() == int((test["w2mpro"] == 99.0).sum())
    assert spearmanr(_ancil(ens, "zmode"), test["redshift"]).statistic > 0.8
    with pytest.raises(KeyError, match="extinction_i"):
        _estimate(model, {k: v for k, v in test.items() if k != "extinction_i"}, output_mode="return")


def test_extra_cols_on_dc2_columns(tables):
    """The stages' ``extra_cols`` option on DC2 columns: the i-band error enters x as a 12th feature
    (standardised), and the estimator needs that column."""
    from photovaez.api import load_predictor
    from photovaez.features import feature_names

    model = PhotoVAEzInformer.make_stage(name=_name("inf"), extra_cols=["mag_err_i_lsst"], **TINY).inform(
        tables[0]).data
    pred = load_predictor(model)
    assert model["model_config"]["dim_x"] == 12 and feature_names(pred.spec)[-1] == "mag_err_i_lsst"
    x, _ = pred.features(tables[1])
    e = np.asarray(tables[1]["mag_err_i_lsst"], np.float64)
    np.testing.assert_allclose(x[:, -1], (e - pred.scaler.mean[-1]) / pred.scaler.std[-1])
    ens = _estimate(model, tables[1], output_mode="return")
    assert ens.npdf == len(e) and np.all(np.isfinite(ens.objdata["yvals"]))
    with pytest.raises(KeyError, match="mag_err_i_lsst"):
        _estimate(model, {k: v for k, v in tables[1].items() if k != "mag_err_i_lsst"}, output_mode="return")
