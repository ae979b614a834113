"""The commands of ``photovaez``: each takes the parsed arguments and returns the exit status.

``train`` and ``estimate`` run the RAIL stages :class:`PhotoVAEzInformer` and
:class:`PhotoVAEzEstimator`; ``evaluate`` and ``plot`` score a qp ensemble against the true
redshifts with :mod:`photovaez.metrics` and :mod:`photovaez.plots`; ``compare`` runs
:func:`rail.photovaez.compare.compare_to_files`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from photovaez.metrics import METRIC_LABELS, metric_rows

from .options import parsed_stage_options
from .tables import CLIError, check_columns, check_file, given_columns, hdf5_columns, out_path, read_pdfs, read_table

__all__ = ["cmd_compare", "cmd_estimate", "cmd_evaluate", "cmd_plot", "cmd_train", "metrics_markdown"]

DEFAULT_MAG = "mag_i_lsst"

_names = itertools.count()


def _unique(prefix: str) -> str:
    # RAIL keeps one output alias per stage name: each call in a process gets its own name
    n = next(_names)
    return prefix if n == 0 else f"{prefix}_{n}"


def _model_columns(model: Mapping[str, Any]) -> list[str]:
    from photovaez.features import FeatureSpec

    return list(FeatureSpec.from_dict(model["feature_spec"]).columns)


def cmd_train(args: argparse.Namespace) -> int:
    from rail.estimation.algos.photovaez import PhotoVAEzInformer

    opts = parsed_stage_options(args)
    train = read_table(args.train_file, args.group, "training")
    unlabeled = read_table(args.unlabeled, args.group, "unlabeled") if args.unlabeled else None
    given = given_columns(opts)
    check_columns(list(train), given, args.train_file)
    model_path = out_path(args.model, "model")
    stage = PhotoVAEzInformer.make_stage(name=_unique("photovaez_train"), model=model_path, hdf5_groupname="",
                                         **opts)
    needed = {c: "feature column" for c in stage.feature_spec.columns}
    check_columns(list(train), {**needed, stage.config.redshift_col: "--redshift-col"}, args.train_file)
    if unlabeled is not None:
        check_columns(list(unlabeled), needed, args.unlabeled)
    handle = stage.inform(train, unlabeled)
    report = handle.data.get("report", {})
    where = f"; model written to {model_path}" if stage.config.output_mode == "default" else ""
    print(f"trained on {report.get('n_labelled')} labelled and {report.get('n_unlabelled')} unlabelled "
          f"galaxies ({report.get('epochs_run')} epochs){where}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from photovaez.io import load_model
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator

    opts = parsed_stage_options(args)
    check_file(args.model, "model")
    check_file(args.input_file, "input")
    model = load_model(args.model)
    needed = {c: "feature column of the model" for c in _model_columns(model)}
    out = out_path(args.output, "output")
    hdf5 = hdf5_columns(args.input_file, args.group)
    if hdf5 is not None:  # an hdf5 table: RAIL reads it chunk by chunk (chunk_size)
        group, names = hdf5
        check_columns(names, needed, args.input_file)
        table = None
    else:
        group, table = "", read_table(args.input_file, args.group, "input")
        check_columns(list(table), needed, args.input_file)
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


def _truth(args: argparse.Namespace, ens: Any) -> tuple[dict, np.ndarray]:
    truth = read_table(args.truth_file, args.group, "truth")
    check_columns(list(truth), {args.redshift_col: "--redshift-col"}, args.truth_file)
    ztrue = np.asarray(truth[args.redshift_col], dtype=np.float64)
    if len(ztrue) != ens.npdf:
        raise CLIError(f"{args.pdfs} has {ens.npdf} PDFs but {args.truth_file} has {len(ztrue)} rows")
    return truth, ztrue


_ROWS = metric_rows(tuple(METRIC_LABELS))  # every number of photovaez.metrics.evaluate


def metrics_markdown(m: Mapping[str, Any]) -> str:
    """The metrics of :func:`photovaez.metrics.evaluate` as a Markdown table (one row a metric)."""
    lines = ["| metric | value |", "|---|---|"]
    for key, label, fmt in _ROWS:
        if key in m:
            lines.append(f"| {label} | {fmt.format(m[key])} |")
    return "\n".join(lines) + "\n"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from photovaez.metrics import evaluate

    ens = read_pdfs(args.pdfs)
    _, ztrue = _truth(args, ens)
    m = evaluate(None, ens, ztrue)
    sys.stdout.write(metrics_markdown(m))
    if args.json:
        path = out_path(args.json, "JSON")
        with open(path, "w") as f:
            json.dump(m, f, indent=2, default=float)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from photovaez import plots
    from photovaez.metrics import as_grid_pdfs

    ens = read_pdfs(args.pdfs)
    truth, ztrue = _truth(args, ens)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    zmode = np.ravel(ens.ancil["zmode"]) if ens.ancil is not None and "zmode" in ens.ancil else None
    ok = np.isfinite(ztrue)
    if zmode is not None:
        ok &= np.isfinite(zmode)
    if not ok.any():
        raise CLIError(f"no galaxy of {args.truth_file} has a finite {args.redshift_col!r}")
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
        from photovaez.io import load_model

        check_file(args.model, "model")
        model = load_model(args.model)
        check_columns(list(truth), {c: "feature column of the model" for c in _model_columns(model)},
                      args.truth_file)
        sub = {k: np.asarray(v)[ok] for k, v in truth.items()}
        written.append(plots.plot_latent_embeddings(model, sub, os.path.join(out, "latent_embeddings.png"),
                                                    ztrue=zt))
    for w in written:
        print(w)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rail.photovaez.compare import (
        ESTIMATORS,
        compare_to_files,
        installed_estimators,
        labelled_and_unlabelled,
        markdown_table,
        shared_options,
    )

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
    check_columns(list(train), {args.redshift_col: "--redshift-col"}, args.train_file)
    check_columns(list(test), {args.redshift_col: "--redshift-col (the true redshifts)"}, args.test_file)
    columns = {c: "--bands" for c in options.get("bands", [])}
    columns.update({c: "--err-bands" for c in options.get("err_bands", [])})
    for path, table in ((args.train_file, train), (args.test_file, test)):
        check_columns(list(table), columns, path)
    extra = None
    if args.unlabeled:
        extra = read_table(args.unlabeled, args.group, "unlabeled")
        check_columns(list(extra), columns, args.unlabeled)
    labelled, unlabelled = labelled_and_unlabelled(train, args.redshift_col, extra)
    data = dict(labelled=labelled, test=test, unlabelled=unlabelled, options=options, stage_options=stage_options)

    def document(res: dict) -> dict:
        return {"train": args.train_file, "test": args.test_file, "unlabeled": args.unlabeled,
                "options": options, "stage_options": stage_options, "results": res[""]}

    def markdown(res: dict) -> str:
        return markdown_table(res, [e for e in estimators if e in res[""]]) + "\n"

    res, jpath, mpath = compare_to_files(args.out, [("", data)], estimators=estimators, timeout=args.timeout,
                                         document=document, markdown=markdown)
    with open(mpath) as fh:
        sys.stdout.write(fh.read())
    print(f"wrote {jpath} and {mpath}")
    return 0 if all("error" not in r for r in res[""].values()) else 1
