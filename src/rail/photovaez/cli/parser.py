"""The ``photovaez`` argument parser and :func:`main`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import DEFAULT_MAG, cmd_compare, cmd_estimate, cmd_evaluate, cmd_plot, cmd_train
from .options import add_stage_options, dict_parser, list_parser, set_option
from .tables import CLIError

__all__ = ["build_parser", "main"]

PROG = "photovaez"
DEFAULT_GROUP = "photometry"


def build_parser() -> argparse.ArgumentParser:
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer
    from rail.photovaez.compare import ESTIMATORS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog=PROG, description="PhotoVAEz photometric redshifts (semi-supervised "
                                "VAE) from the command line: train, estimate, evaluate, plot, compare.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    group_help = "hdf5 group of the table ('' for a flat file; a flat file is read as it is)"

    t = sub.add_parser("train", help="train a model (PhotoVAEzInformer)", description=(
        "Train PhotoVAEz on TRAIN_FILE (rows whose redshift is NaN or <= 0 count as unlabelled) and, "
        "optionally, unlabelled photometry; writes the model file."))
    t.add_argument("train_file", metavar="TRAIN_FILE", help="training table (hdf5, parquet, fits, ...)")
    t.add_argument("--model", required=True, metavar="OUT.pkl", help="model file to write")
    t.add_argument("--unlabeled", metavar="FILE", default=None, help="photometry without redshifts (optional)")
    t.add_argument("--group", "--hdf5-groupname", default=DEFAULT_GROUP, help=group_help + " (default: %(default)s)")
    add_stage_options(t, PhotoVAEzInformer, "PhotoVAEzInformer options")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("estimate", help="photo-z PDFs of a table (PhotoVAEzEstimator)", description=(
        "Estimate the photo-z PDFs of INPUT_FILE with MODEL; writes a qp ensemble (qp.interp on "
        "linspace(zmin, zmax, nzbins), ancil zmode, zmean, zmedian, n_nondetect, n_bad_error, pdf_flag)."))
    e.add_argument("model", metavar="MODEL", help="model file written by 'photovaez train'")
    e.add_argument("input_file", metavar="INPUT_FILE", help="photometry table (hdf5, parquet, fits, ...)")
    e.add_argument("--output", required=True, metavar="OUT.hdf5", help="PDF file to write (qp ensemble)")
    e.add_argument("--group", "--hdf5-groupname", default=DEFAULT_GROUP, help=group_help + " (default: %(default)s)")
    add_stage_options(e, PhotoVAEzEstimator, "PhotoVAEzEstimator options")
    e.set_defaults(func=cmd_estimate)

    v = sub.add_parser("evaluate", help="metrics of PDFs against true redshifts", formatter_class=fmt,
                       description="Score PDFS (a qp ensemble) against the true redshifts of TRUTH_FILE "
                       "(row by row) with photovaez.metrics.evaluate; prints a Markdown table.")
    v.add_argument("pdfs", metavar="PDFS.hdf5", help="PDF file written by 'photovaez estimate'")
    v.add_argument("truth_file", metavar="TRUTH_FILE", help="table with the true redshifts, same rows")
    v.add_argument("--redshift-col", default="redshift", help="column of the true redshift")
    v.add_argument("--group", "--hdf5-groupname", default=DEFAULT_GROUP, help=group_help)
    v.add_argument("--json", metavar="OUT.json", default=None, help="also write the metrics as JSON")
    v.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plot", help="diagnostic plots of PDFs against true redshifts", formatter_class=fmt,
                        description="Write the PNG plots of photovaez.plots: photo-z vs spec-z, PIT "
                        "histogram and QQ, stacked n(z), scatter and outliers vs redshift and vs "
                        "magnitude (--mag-col, when the truth table has it) and, with --model, the "
                        "latent embeddings of the truth table's photometry.")
    pl.add_argument("pdfs", metavar="PDFS.hdf5", help="PDF file written by 'photovaez estimate'")
    pl.add_argument("truth_file", metavar="TRUTH_FILE", help="table with the true redshifts, same rows")
    pl.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the PNG files")
    pl.add_argument("--redshift-col", default="redshift", help="column of the true redshift")
    pl.add_argument("--mag-col", default=DEFAULT_MAG, help="magnitude column for the metrics-vs-magnitude plot")
    pl.add_argument("--model", metavar="MODEL", default=None,
                    help="model file: also plot the latent embeddings of the truth table's photometry")
    pl.add_argument("--group", "--hdf5-groupname", default=DEFAULT_GROUP, help=group_help)
    pl.set_defaults(func=cmd_plot)

    c = sub.add_parser("compare", help="PhotoVAEz against RAIL's other estimators on the same files",
                       description=(
                           "Inform every estimator on TRAIN_FILE and score its PDFs of TEST_FILE (which holds the "
                           "true redshifts) with RAIL's metrics; each estimator runs in its own process with a "
                           "time limit. Rows of TRAIN_FILE whose redshift is NaN or <= 0, and --unlabeled, go "
                           "to PhotoVAEz only (supervised estimators see the labelled rows). Writes "
                           "DIR/compare.json and DIR/compare.md. Estimators other than trainZ and PhotoVAEz come "
                           "with pip install 'pz-rail-photovaez[compare]'."))
    c.add_argument("train_file", metavar="TRAIN_FILE", help="training table with redshifts (hdf5, parquet, fits)")
    c.add_argument("test_file", metavar="TEST_FILE", help="table to estimate, with its true redshifts")
    c.add_argument("--out", required=True, metavar="DIR", help="folder for compare.json and compare.md")
    c.add_argument("--unlabeled", metavar="FILE", default=None, help="photometry without redshifts (PhotoVAEz)")
    c.add_argument("--estimators", nargs="+", default=None, metavar="NAME",
                   help=f"estimators (space- or comma-separated) from {list(ESTIMATORS)}; default: every "
                        "installed one")
    c.add_argument("--group", "--hdf5-groupname", default=DEFAULT_GROUP, help=group_help + " (default: %(default)s)")
    c.add_argument("--redshift-col", default="redshift",
                   help="column of the (true) redshift in both files (default: %(default)s)")
    c.add_argument("--zmin", type=float, default=0.0, help="lower end of the redshift grid (default: %(default)s)")
    c.add_argument("--zmax", type=float, default=3.0, help="upper end of the redshift grid (default: %(default)s)")
    c.add_argument("--nzbins", type=int, default=301, help="points of the redshift grid (default: %(default)s)")
    c.add_argument("--bands", type=list_parser(["a"]), default=None, metavar="A,B,..",
                   help="magnitude columns (default: each estimator's RAIL default, LSST ugrizy)")
    c.add_argument("--err-bands", type=list_parser(["a"]), default=None, metavar="A,B,..",
                   help="magnitude-error columns, one per band")
    c.add_argument("--ref-band", default=None, help="reference band (default: each estimator's default)")
    c.add_argument("--mag-limits", type=dict_parser, default=None, metavar="JSON",
                   help="band -> limiting magnitude, replaces non-detections")
    c.add_argument("--filter-list", type=list_parser(["a"]), default=None, metavar="A,B,..",
                   help="BPZ filter-curve names, one per band")
    c.add_argument("--set", action="append", type=set_option, metavar="ESTIMATOR.KEY=VALUE",
                   help="an option of one estimator's stages, e.g. PhotoVAEz.epochs=50 or "
                        "KNearNeigh.nneigh_max=9 (VALUE as JSON, else text); repeatable")
    c.add_argument("--timeout", type=float, default=1200.0,
                   help="seconds per estimator (inform + estimate) (default: %(default)s)")
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``photovaez`` command; returns 0, or exits with status 2 on an input error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        msg = str(exc)
    except (FileNotFoundError, KeyError, ValueError, TypeError, OSError) as exc:
        msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        msg = " ".join(str(msg).split())  # one line
    sys.stderr.write(f"{PROG} {args.command}: error: {msg}\n")
    raise SystemExit(2)
