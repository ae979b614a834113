"""The ``photovaez`` command line (rail.photovaez.cli): generated options, a train -> estimate ->
evaluate -> plot round trip on a few hundred DC2 galaxies, and one-line errors with exit status 2.

Tiny networks and two epochs keep the file at a few seconds; the assertions are about the
plumbing (files, options reaching the stages, messages), not about photo-z quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import qp
import tables_io

from photovaez.io import load_model
from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer
from rail.photovaez import cli
from rail.photovaez.cli.options import parsed_stage_options, stage_param
from rail.photovaez.data import read_dc2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--hidden", "16,16", "--dim-a", "3", "--dim-b", "3", "--epochs", "2", "--batch-size", "64",
        "--min-epochs", "1", "--device", "cpu", "--seed", "3", "--proposal-steps", "0",
        "--calibrate-posterior", "false"]
EST = ["--n-b-samples", "4", "--nzbins", "101", "--chunk-size", "40", "--device", "cpu"]


def _flags(cls):
    return ["--" + k.replace("_", "-") for k in cls.config_options]


@pytest.mark.parametrize("command, cls", [("train", PhotoVAEzInformer), ("estimate", PhotoVAEzEstimator)])
def test_help_documents_every_stage_option(command, cls, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    missing = [f for f in _flags(cls) if f not in out]
    assert not missing, f"{command} --help lacks {missing}"
    assert ("--epochs" in out) if command == "train" else ("--n-b-samples" in out)
    # the option's msg is the help text (argparse rewraps it), with the stage default
    key = "epochs" if command == "train" else "n_b_samples"
    p = stage_param(key, cls.config_options[key])
    assert isinstance(p.default, int) and p.msg
    assert f"{' '.join(p.msg.split())} (default: {p.default})" in " ".join(out.split())


@pytest.mark.parametrize("command, flags", [("evaluate", ["--redshift-col", "--json", "--group"]),
                                            ("plot", ["--out-dir", "--redshift-col", "--model", "--mag-col"]),
                                            ("compare", ["--out", "--unlabeled", "--estimators", "--set", "--timeout",
                                                         "--zmin", "--zmax", "--nzbins", "--bands", "--err-bands",
                                                         "--ref-band", "--mag-limits", "KNearNeigh", "PZFlow"])])
def test_help_of_evaluate_plot_compare(command, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(f in out for f in flags)


def test_option_types_are_parsed():
    """int/float/bool/str, lists as comma-separated or JSON, dicts as JSON; unset options are
    not passed (so the stage defaults apply)."""
    args = cli.build_parser().parse_args([
        "train", "t.hdf5", "--model", "m.pkl", "--hidden", "32,16", "--learning-rate", "3e-4",
        "--resample", "false", "--calibrate", "--activation", "tanh", "--colours", '[["a", "b"]]',
        "--mag-limits", '{"a": 25.5, "b": 26}', "--replace-error-vals", "0.2,0.3", "--extra-cols", "ebv",
    ])
    opts = parsed_stage_options(args)
    assert opts == {"hidden": [32, 16], "learning_rate": 3e-4, "resample": False, "calibrate": True,
                    "activation": "tanh", "colours": [["a", "b"]], "mag_limits": {"a": 25.5, "b": 26},
                    "replace_error_vals": [0.2, 0.3], "extra_cols": ["ebv"]}
    args = cli.build_parser().parse_args(["estimate", "m.pkl", "x.hdf5", "--output", "o.hdf5",
                                          "--posterior", "grid", "--calculated-point-estimates", "[]"])
    assert parsed_stage_options(args) == {"posterior": "grid", "calculated_point_estimates": []}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """300 training galaxies (grouped hdf5) and 100 test galaxies (flat hdf5), random rows."""
    d = tmp_path_factory.mktemp("cli")
    t = read_dc2("training")
    idx = np.random.default_rng(5).permutation(len(t["redshift"]))
    train = {k: v[np.sort(idx[:300])] for k, v in t.items()}
    test = {k: v[np.sort(idx[300:400])] for k, v in t.items()}
    tables_io.write({"photometry": train}, str(d / "train.hdf5"))
    tables_io.write(test, str(d / "test.hdf5"))
    return d, test


def test_round_trip(files, capsys):
    d, test = files
    model = d / "model.pkl"
    assert cli.main(["train", str(d / "train.hdf5"), "--model", str(model), "--unlabeled", str(d / "test.hdf5"),
                     *TINY]) == 0
    m = load_model(str(model))
    assert m["model_config"]["hidden"] == [16, 16] and m["model_config"]["dim_a"] == 3
    assert m["train_config"]["epochs"] == 2 and m["train_config"]["seed"] == 3
    assert m["report"]["n_unlabelled"] > 0  # --unlabeled reached the informer

    pdfs = d / "pdfs.hdf5"
    assert cli.main(["estimate", str(model), str(d / "test.hdf5"), "--group", "", "--output", str(pdfs), *EST]) == 0
    ens = qp.read(str(pdfs))
    assert ens.npdf == 100
    zgrid = np.ravel(ens.metadata["xvals"])
    assert len(zgrid) == 101 and zgrid[-1] == pytest.approx(3.0)
    assert {"zmode", "zmean", "zmedian", "pdf_flag"} <= set(ens.ancil)
    # the same stage called from Python gives the same PDFs (up to float32 rounding, which can
    # differ between chunk sizes)
    ref = PhotoVAEzEstimator.make_stage(name="cli_reference", model=m, hdf5_groupname="", output_mode="return",
                                        n_b_samples=4, nzbins=101, device="cpu").estimate(test).data
    np.testing.assert_allclose(ens.objdata["yvals"], ref.objdata["yvals"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.ravel(ens.ancil["zmode"]), np.ravel(ref.ancil["zmode"]), rtol=1e-4)

    capsys.readouterr()
    out_json = d / "metrics.json"
    assert cli.main(["evaluate", str(pdfs), str(d / "test.hdf5"), "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | value |\n|---|---|\n")
    assert "| sigma_NMAD |" in table and "| PIT KS |" in table and "| galaxies | 100 |" in table
    metrics = json.loads(out_json.read_text())
    assert metrics["n"] == 100 and 0 <= metrics["pit_ks"] <= 1 and metrics["sigma_nmad"] >= 0
    assert f"| sigma_NMAD | {metrics['sigma_nmad']:.4f} |" in table

    plots = d / "plots"
    assert cli.main(["plot", str(pdfs), str(d / "test.hdf5"), "--out-dir", str(plots), "--model", str(model)]) == 0
    names = sorted(os.listdir(plots))
    assert names == sorted(["zphot_zspec.png", "pit_hist.png", "pit_qq.png", "nz.png", "metrics_vs_z.png",
                            "metrics_vs_mag_i_lsst.png", "latent_embeddings.png"])
    for n in names:
        assert (plots / n).read_bytes()[:8] == PNG_SIGNATURE


def _error(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_wrong_column_exits_2_naming_it(files, capsys):
    d, _ = files
    err = _error(["train", str(d / "train.hdf5"), "--model", str(d / "x.pkl"), "--bands", "mag_u_lsst,mag_nope",
                  *TINY], capsys)
    assert len(err.splitlines()) == 1
    assert "'mag_nope'" in err and "--bands" in err and "train.hdf5" in err
    assert not (d / "x.pkl").exists()
    err = _error(["evaluate", str(d / "train.hdf5"), str(d / "test.hdf5"), "--redshift-col", "zspec"], capsys)
    assert len(err.splitlines()) == 1  # not a qp file: a clear message, not a traceback
    assert "cannot read PDFs" in err


@pytest.mark.parametrize("argv, words", [
    (["train", "{d}/missing.hdf5", "--model", "{d}/x.pkl"], ["not found", "missing.hdf5"]),
    (["train", "{d}/train.hdf5", "--model", "{d}/x.pkl", "--group", "phot"], ["no group 'phot'", "photometry"]),
    (["train", "{d}/train.hdf5", "--model", "{d}/x.pkl", "--redshift-col", "zspec"], ["'zspec'", "--redshift-col"]),
    (["estimate", "{d}/train.hdf5", "{d}/test.hdf5", "--output", "{d}/o.hdf5"], ["model file"]),
    (["estimate", "{d}/missing.pkl", "{d}/test.hdf5", "--output", "{d}/o.hdf5"], ["not found", "missing.pkl"]),
])
def test_input_errors_exit_2(files, capsys, argv, words):
    d, _ = files
    err = _error([a.format(d=d) for a in argv], capsys)
    assert len(err.splitlines()) == 1 and err.startswith("photovaez ")
    for w in words:
        assert w in err


def test_command_exit_status(files):
    """The installed entry point (``python -m rail.photovaez.cli``): status 2 and a one-line message."""
    d, _ = files
    r = subprocess.run([sys.executable, "-m", "rail.photovaez.cli", "evaluate", str(d / "nothere.hdf5"),
                        str(d / "test.hdf5")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"photovaez evaluate: error: PDF file not found: {d / 'nothere.hdf5'}"
    assert "Traceback" not in r.stderr
