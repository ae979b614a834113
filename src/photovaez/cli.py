"""The ``photovaez`` command: train, estimate, evaluate and plot from table files.

::

    photovaez train TRAIN_FILE --model OUT.pkl [--unlabeled FILE] [--group photometry] [options]
    photovaez estimate MODEL INPUT_FILE --output OUT.hdf5 [--group ...] [--posterior amortized] [options]
    photovaez evaluate PDFS.hdf5 TRUTH_FILE [--redshift-col redshift] [--json OUT.json]
    photovaez plot PDFS.hdf5 TRUTH_FILE --out-dir DIR [--model MODEL]
    photovaez compare TRAIN_FILE TEST_FILE --out DIR [--unlabeled FILE] [--estimators A,B] [--set PhotoVAEz.epochs=50]

``compare`` runs PhotoVAEz and RAIL's other installed estimators on the same files
(:func:`rail.photovaez.compare.compare`).  ``train`` and ``estimate`` run the RAIL stages :class:`PhotoVAEzInformer` and
:class:`PhotoVAEzEstimator` (the same code as a ceci pipeline or a notebook).  Their options are
generated from the stages' ``config_options``: ``--epochs 50``, ``--hidden 512,256,128`` (or JSON
``[512,256,128]``), ``--mag-limits '{"mag_u_lsst": 27.8, ...}'``, ``--resample false``; ``--help``
lists every option with its meaning.  Tables are read with ``tables_io`` (hdf5, parquet, fits,
...); ``--group`` names the hdf5 group (``''`` for a flat file; a flat file is used as it is).

Errors in the inputs (a missing file, group or column, an invalid option) print one line naming
the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["main", "build_parser", "CLIError"]

PROG = "photovaez"
DEFAULT_GROUP = "photometry"
DEFAULT_MAG = "mag_i_lsst"

# options the command line sets itself (the stage name, the input and output files, the group)
_RESERVED = frozenset({"name", "config", "input", "model", "output", "unlabeled", "hdf5_groupname"})

_names = itertools.count()


class CLIError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


# --------------------------------------------------------------------------------------------
# options generated from config_options


def _param(key: str, p: Any) -> Any:
    """The StageParameter of an option (RAIL's SHARED_PARAMS are resolved by name)."""
    from ceci.config import StageConfig

    if isinstance(p, StageConfig):
        p = dict.__getitem__(p, key)
    return p


def _parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "y", "on", "t"):
        return True
    if t in ("0", "false", "no", "n", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar(text: str, kind: type | None) -> Any:
    if kind is bool:
        return _parse_bool(text)
    if kind in (int, float):
        return kind(text)
    if kind is None:  # unknown element type: a number when it reads as one
        for k in (int, float):
            try:
                return k(text)
            except ValueError:
                pass
    return text


def _list_parser(default: Any) -> Callable[[str], list]:
    elems = [e for e in (default or []) if e is not None]
    kind = type(elems[0]) if elems and isinstance(elems[0], (bool, int, float, str)) else None
    if kind is int and any(isinstance(e, float) for e in elems):
        kind = float

    def parse(text: str) -> list:
        t = text.strip()
        if t.startswith("["):
            try:
                value = json.loads(t)
            except json.JSONDecodeError as exc:
                raise argparse.ArgumentTypeError(f"invalid JSON list {text!r}: {exc}") from None
            if not isinstance(value, list):
                raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
            return value
        if t == "":
            return []
        try:
            return [_scalar(s.strip(), kind) for s in t.split(",")]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid list {text!r}: {exc}") from None

    parse.__name__ = "list"
    return parse


def _dict_parser(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON object {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


_dict_parser.__name__ = "dict"


def _typed(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def add_stage_options(parser: argparse.ArgumentParser, stage_cls: type, title: str) -> list[str]:
    """One ``--option`` per entry of ``stage_cls.config_options`` (the option's ``msg`` as help).

    Options that are not given are not passed to the stage, so the stage's defaults apply.
    Returns the option keys added.
    """
    group = parser.add_argument_group(title, f"configuration of RAIL's {stage_cls.__name__} (see "
                                      "docs/configuration.md); unset options keep the stage default")
    keys = []
    for key, raw in stage_cls.config_options.items():
        if key in _RESERVED:
            continue
        p = _param(key, raw)
        kind, default = getattr(p, "dtype", None), getattr(p, "default", None)
        msg = (getattr(p, "msg", "") or "").replace("%", "%%")
        kw: dict[str, Any] = dict(dest=f"opt_{key}", default=argparse.SUPPRESS)
        shown = json.dumps(default) if isinstance(default, (list, dict)) else repr(default)
        if kind is bool:
            kw.update(type=_parse_bool, nargs="?", const=True, metavar="true|false")
        elif kind is list:
            kw.update(type=_list_parser(default), metavar="A,B,..|JSON")
        elif kind is dict:
            kw.update(type=_dict_parser, metavar="JSON")
        elif kind in (int, float, str):
            kw.update(type=_typed(kind), metavar=kind.__name__.upper())
        else:
            kw.update(metavar="VALUE")
        kw["help"] = f"{msg} (default: {shown.replace('%', '%%')})"
        group.add_argument("--" + key.replace("_", "-"), **kw)
        keys.append(key)
    return keys


def _stage_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_")}


# --------------------------------------------------------------------------------------------
# tables


def _is_table(obj: Any) -> bool:
    """A table (columns of arrays) rather than a mapping of tables (hdf5 groups, fits HDUs)."""
    if hasattr(obj, "columns") or hasattr(obj, "colnames"):  # DataFrame, astropy Table
        return True
    if isinstance(obj, Mapping):
        return not any(isinstance(v, Mapping) or hasattr(v, "columns") or hasattr(v, "colnames")
                       for v in obj.values())
    return isinstance(obj, np.ndarray) and obj.dtype.names is not None


def _as_dict(table: Any) -> dict[str, np.ndarray]:
    if isinstance(table, np.ndarray) and table.dtype.names is not None:
        return {k: np.asarray(table[k]) for k in table.dtype.names}
    names = list(table.colnames) if hasattr(table, "colnames") else list(table.keys())
    return {str(k): np.asarray(table[k]) for k in names}


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{what} path is a folder, not a file: {path}")


def _select_group(data: Any, group: str, path: str, what: str) -> Any:
    if _is_table(data):
        return data  # a flat file: the group does not apply
    if not isinstance(data, Mapping):
        raise CLIError(f"{what} file {path} does not hold a table (got {type(data).__name__})")
    keys = [str(k) for k in data.keys()]
    if group and group in data:
        sub = data[group]
        if not _is_table(sub):
            raise CLIError(f"group {group!r} of {what} file {path} holds groups {list(sub.keys())}, not a table")
        return sub
    if not group and len(keys) == 1:
        return data[keys[0]]
    raise CLIError(f"{what} file {path} has no group {group!r}; its groups are {keys} (use --group NAME)")


def read_table(path: str, group: str, what: str) -> dict[str, np.ndarray]:
    """The table in a file (any format ``tables_io`` reads) as a dict of numpy arrays."""
    import tables_io

    _check_file(path, what)
    try:
        data = tables_io.read(path)
    except Exception as exc:  # noqa: BLE001 - tables_io raises many kinds
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read {what} file {path}: {msg}") from None
    return _as_dict(_select_group(data, group, path, what))


def _hdf5_columns(path: str, group: str) -> tuple[str, list[str]] | None:
    """(group actually used, column names) of an hdf5 table file, or None if it is not one."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if group and group in f and isinstance(f[group], h5py.Group):
                node, used = f[group], group
            elif all(isinstance(v, h5py.Dataset) for v in f.values()) and len(f):
                node, used = f, ""
            elif not group and len(f) == 1 and isinstance(next(iter(f.values())), h5py.Group):
                used = next(iter(f.keys()))
                node = f[used]
            else:
                groups = [k for k, v in f.items() if isinstance(v, h5py.Group)]
                raise CLIError(f"input file {path} has no group {group!r}; its groups are {groups} "
                               "(use --group NAME)")
            if not all(isinstance(v, h5py.Dataset) for v in node.values()):
                return None
            return used, list(node.keys())
    except OSError:
        return None


def _check_columns(columns: Sequence[str], needed: Mapping[str, str], path: str) -> None:
    """``needed`` maps column -> what names it; the first missing one is an error."""
    for col, what in needed.items():
        if col not in columns:
            shown = list(columns) if len(columns) <= 30 else list(columns)[:30] + ["..."]
            raise CLIError(f"column {col!r} ({what}) is not in {path}; its columns are {shown}")


def _given_columns(opts: Mapping[str, Any]) -> dict[str, str]:
    """Column names given on the command line, with the option that names each."""
    out: dict[str, str] = {}
    for key in ("bands", "err_bands", "extra_cols"):
        for c in opts.get(key) or []:
            if isinstance(c, str):
                out.setdefault(c, "--" + key.replace("_", "-"))
    for key in ("ref_band", "redshift_col"):
        if isinstance(opts.get(key), str) and opts[key]:
            out.setdefault(opts[key], "--" + key.replace("_", "-"))
    return out


# --------------------------------------------------------------------------------------------
# commands


def _unique(prefix: str) -> str:
    # RAIL keeps one output alias per stage name: each call in a process gets its own name
    n = next(_names)
    return prefix if n == 0 else f"{prefix}_{n}"


def _out_path(path: str, what: str) -> str:
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise CLIError(f"folder of the {what} file does not exist: {folder}")
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from rail.estimation.algos.photovaez import PhotoVAEzInformer

    opts = _stage_options(args)
    train = read_table(args.train_file, args.group, "training")
    unlabeled = read_table(args.unlabeled, args.group, "unlabeled") if args.unlabeled else None
    given = _given_columns(opts)
    _check_columns(list(train), given, args.train_file)
    model_path = _out_path(args.model, "model")
    stage = PhotoVAEzInformer.make_stage(name=_unique("photovaez_train"), model=model_path, hdf5_groupname="",
                                         **opts)
    needed = {c: "feature column" for c in stage.feature_spec.columns}
    _check_columns(list(train), {**needed, stage.config.redshift_col: "--redshift-col"}, args.train_file)
    if unlabeled is not None:
        _check_columns(list(unlabeled), needed, args.unlabeled)
    handle = stage.inform(train, unlabeled)
    report = handle.data.get("report", {})
    where = f"; model written to {model_path}" if stage.config.output_mode == "default" else ""
    print(f"trained on {report.get('n_labelled')} labelled and {report.get('n_unlabelled')} unlabelled "
          f"galaxies ({report.get('epochs_run')} epochs){where}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator

    from .features import FeatureSpec
    from .io import load_model

    opts = _stage_options(args)
    _check_file(args.model, "model")
    _check_file(args.input_file, "input")
    model = load_model(args.model)
    columns = FeatureSpec.from_dict(model["feature_spec"]).columns
    out = _out_path(args.output, "output")
    hdf5 = _hdf5_columns(args.input_file, args.group)
    if hdf5 is not None:  # an hdf5 table: RAIL reads it chunk by chunk (chunk_size)
        group, names = hdf5
        _check_columns(names, {c: "feature column of the model" for c in columns}, args.input_file)
        table = None
    else:
        group, table = "", read_table(args.input_file, args.group, "input")
        _check_columns(list(table), {c: "feature column of the model" for c in columns}, args.input_file)
    stage = PhotoVAEzEstimator.make_stage(name=_unique("photovaez_estimate"), model=model, output=out,
                                          hdf5_groupname=group, **opts)
    if table is None:
        stage.set_data("input", None, path=os.path.abspath(args.input_file), do_read=False)
    else:
        stage.set_data("input", table)
    stage.validate()
    stage.run()
    stage.finalize()
    if stage.config.output_mode == "default":
        print(f"PDFs of {getattr(stage, '_input_length', '?')} galaxies written to {out}")
    return 0


def _read_pdfs(path: str) -> Any:
    import qp

    _check_file(path, "PDF")
    try:
        return qp.read(path)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read PDFs (a qp ensemble) from {path}: {msg}") from None


def _truth(args: argparse.Namespace, ens: Any) -> tuple[dict, np.ndarray]:
    truth = read_table(args.truth_file, args.group, "truth")
    _check_columns(list(truth), {args.redshift_col: "--redshift-col"}, args.truth_file)
    ztrue = np.asarray(truth[args.redshift_col], dtype=np.float64)
    if len(ztrue) != ens.npdf:
        raise CLIError(f"{args.pdfs} has {ens.npdf} PDFs but {args.truth_file} has {len(ztrue)} rows")
    return truth, ztrue


_ROWS = [
    ("galaxies", "n", "{:d}"), ("left out (no finite redshift)", "n_dropped", "{:d}"),
    ("CDE loss", "cdeloss", "{:.4f}"), ("PIT KS", "pit_ks", "{:.4f}"), ("PIT CvM", "pit_cvm", "{:.4f}"),
    ("PIT AD", "pit_ad", "{:.4f}"), ("PIT outlier rate", "pit_outlier_rate", "{:.4f}"),
    ("sigma_IQR", "sigma_iqr", "{:.4f}"), ("bias", "bias", "{:+.5f}"), ("outlier rate", "outlier_rate", "{:.4f}"),
    ("sigma_NMAD", "sigma_nmad", "{:.4f}"), ("\\|ez\\| > 0.15", "catastrophic_fraction", "{:.4f}"),
]


def markdown_table(m: Mapping[str, Any]) -> str:
    """The metrics of :func:`photovaez.metrics.evaluate` as a Markdown table."""
    lines = ["| metric | value |", "|---|---|"]
    for label, key, fmt in _ROWS:
        if key in m:
            lines.append(f"| {label} | {fmt.format(m[key])} |")
    return "\n".join(lines) + "\n"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate

    ens = _read_pdfs(args.pdfs)
    _, ztrue = _truth(args, ens)
    m = evaluate(None, ens, ztrue)
    sys.stdout.write(markdown_table(m))
    if args.json:
        path = _out_path(args.json, "JSON")
        with open(path, "w") as f:
            json.dump(m, f, indent=2, default=float)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plots

    ens = _read_pdfs(args.pdfs)
    truth, ztrue = _truth(args, ens)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    zmode = np.ravel(ens.ancil["zmode"]) if ens.ancil is not None and "zmode" in ens.ancil else None
    ok = np.isfinite(ztrue)
    if zmode is not None:
        ok &= np.isfinite(zmode)
    if not ok.any():
        raise CLIError(f"no galaxy of {args.truth_file} has a finite {args.redshift_col!r}")
    from .metrics import as_grid_pdfs

    zgrid, dens = as_grid_pdfs(None, ens)
    dens, zt = dens[ok], ztrue[ok]
    zp = zmode[ok] if zmode is not None else None
    written = [
        plots.plot_zphot_zspec(zgrid, dens, zt, os.path.join(out, "zphot_zspec.png"), zpoint=zp),
        plots.plot_pit_hist(zgrid, dens, zt, os.path.join(out, "pit_hist.png")),
        plots.plot_pit_qq(zgrid, dens, zt, os.path.join(out, "pit_qq.png")),
        plots.plot_nz(zgrid, dens, zt, os.path.join(out, "nz.png")),
        plots.plot_metrics_vs_z(zgrid, dens, zt, os.path.join(out, "metrics_vs_z.png"), zpoint=zp),
    ]
    if args.mag_col in truth:
        written.append(plots.plot_metrics_vs_mag(zgrid, dens, zt, np.asarray(truth[args.mag_col], float)[ok],
                                                 os.path.join(out, f"metrics_vs_{args.mag_col}.png"), zpoint=zp,
                                                 mag_label=args.mag_col))
    elif args.mag_col != DEFAULT_MAG:
        raise CLIError(f"column {args.mag_col!r} (--mag-col) is not in {args.truth_file}")
    if args.model:
        from .io import load_model

        _check_file(args.model, "model")
        model = load_model(args.model)
        from .features import FeatureSpec

        cols = FeatureSpec.from_dict(model["feature_spec"]).columns
        _check_columns(list(truth), {c: "feature column of the model" for c in cols}, args.truth_file)
        sub = {k: np.asarray(v)[ok] for k, v in truth.items()}
        written.append(plots.plot_latent_embeddings(model, sub, os.path.join(out, "latent_embeddings.png"),
                                                    ztrue=zt))
    for w in written:
        print(w)
    return 0



def _set_option(text: str) -> tuple[str, str, Any]:
    """``ESTIMATOR.KEY=VALUE`` (VALUE read as JSON when it is JSON, else as a string)."""
    head, sep, value = text.partition("=")
    name, dot, key = head.partition(".")
    if not (sep and dot and name and key):
        raise argparse.ArgumentTypeError(f"expected ESTIMATOR.KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name.strip(), key.strip(), parsed


_set_option.__name__ = "ESTIMATOR.KEY=VALUE"


def cmd_compare(args: argparse.Namespace) -> int:
    from rail.photovaez.compare import (ESTIMATORS, compare, installed_estimators, markdown_table,
                                        shared_options, split_labelled)

    if args.estimators:
        estimators = [e for item in args.estimators for e in item.split(",") if e]
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown:
            raise CLIError(f"unknown estimators {unknown} (--estimators); choose from {list(ESTIMATORS)}")
    else:
        estimators = installed_estimators()
    stage_options: dict[str, dict[str, Any]] = {}
    for name, key, value in args.set or []:
        if name not in ESTIMATORS:
            raise CLIError(f"--set {name}.{key}: unknown estimator {name!r}; choose from {list(ESTIMATORS)}")
        stage_options.setdefault(name, {})[key] = value
    if args.timeout <= 0:
        raise CLIError(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        options = shared_options(redshift_col=args.redshift_col, zmin=args.zmin, zmax=args.zmax,
                                 nzbins=args.nzbins, bands=args.bands, err_bands=args.err_bands,
                                 ref_band=args.ref_band, mag_limits=args.mag_limits, filter_list=args.filter_list)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    train = read_table(args.train_file, args.group, "training")
    test = read_table(args.test_file, args.group, "test")
    _check_columns(list(train), {args.redshift_col: "--redshift-col"}, args.train_file)
    _check_columns(list(test), {args.redshift_col: "--redshift-col (the true redshifts)"}, args.test_file)
    columns = {c: "--bands" for c in options.get("bands", [])}
    columns.update({c: "--err-bands" for c in options.get("err_bands", [])})
    for path, table in ((args.train_file, train), (args.test_file, test)):
        _check_columns(list(table), columns, path)
    labelled, unlabelled = split_labelled(train, args.redshift_col)
    if args.unlabeled:
        extra = read_table(args.unlabeled, args.group, "unlabeled")
        _check_columns(list(extra), columns, args.unlabeled)
        extra = {k: v for k, v in extra.items() if k != args.redshift_col}
        if unlabelled is not None:
            common = [k for k in unlabelled if k in extra]
            extra = {k: np.concatenate([np.asarray(unlabelled[k]), np.asarray(extra[k])]) for k in common}
        unlabelled = extra
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    jpath, mpath = os.path.join(out, "compare.json"), os.path.join(out, "compare.md")
    results: dict[str, dict] = {}

    def save(name: str | None = None, r: dict | None = None) -> None:
        if name is not None:
            results[name] = r
        with open(jpath, "w") as fh:
            json.dump({"train": args.train_file, "test": args.test_file, "unlabeled": args.unlabeled,
                       "options": options, "stage_options": stage_options, "results": results},
                      fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        with open(mpath, "w") as fh:
            fh.write(markdown_table({"": results}, [e for e in estimators if e in results]) + "\n")

    compare(labelled, test, unlabelled=unlabelled, options=options, estimators=estimators,
            stage_options=stage_options, timeout=args.timeout, on_result=save)
    save()
    with open(mpath) as fh:
        sys.stdout.write(fh.read())
    print(f"wrote {jpath} and {mpath}")
    return 0 if all("error" not in r for r in results.values()) else 1


# --------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer

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

    from rail.photovaez.compare import ESTIMATORS

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
    c.add_argument("--redshift-col", default="redshift", help="column of the (true) redshift in both files (default: %(default)s)")
    c.add_argument("--zmin", type=float, default=0.0, help="lower end of the redshift grid (default: %(default)s)")
    c.add_argument("--zmax", type=float, default=3.0, help="upper end of the redshift grid (default: %(default)s)")
    c.add_argument("--nzbins", type=int, default=301, help="points of the redshift grid (default: %(default)s)")
    c.add_argument("--bands", type=_list_parser(["a"]), default=None, metavar="A,B,..",
                   help="magnitude columns (default: each estimator's RAIL default, LSST ugrizy)")
    c.add_argument("--err-bands", type=_list_parser(["a"]), default=None, metavar="A,B,..",
                   help="magnitude-error columns, one per band")
    c.add_argument("--ref-band", default=None, help="reference band (default: each estimator's default)")
    c.add_argument("--mag-limits", type=_dict_parser, default=None, metavar="JSON",
                   help="band -> limiting magnitude, replaces non-detections")
    c.add_argument("--filter-list", type=_list_parser(["a"]), default=None, metavar="A,B,..",
                   help="BPZ filter-curve names, one per band")
    c.add_argument("--set", action="append", type=_set_option, metavar="ESTIMATOR.KEY=VALUE",
                   help="an option of one estimator's stages, e.g. PhotoVAEz.epochs=50 or "
                        "KNearNeigh.nneigh_max=9 (VALUE as JSON, else text); repeatable")
    c.add_argument("--timeout", type=float, default=1200.0, help="seconds per estimator (inform + estimate) (default: %(default)s)")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
