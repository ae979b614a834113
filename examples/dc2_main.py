#!/usr/bin/env python
"""The main PhotoVAEz job on RAIL's bundled DC2 sample: train, estimate, evaluate, plot.

1. ``PhotoVAEzInformer`` trains on ``test_dc2_training_9816.hdf5`` (10,225 galaxies with
   redshifts) and writes the model file.
2. ``PhotoVAEzEstimator`` estimates ``test_dc2_validation_9816.hdf5`` (20,449 galaxies) in chunks
   and writes the PDFs as a qp ensemble (``qp.interp`` on RAIL's grid, ``zmode``/``zmean``/
   ``zmedian`` in the ancil).
3. RAIL's ``SingleEvaluator`` and :func:`photovaez.metrics.evaluate` score the PDFs and ``zmode``
   against the true redshifts; the metrics are written as JSON and a Markdown table.
4. PNG plots: photo-z vs spec-z, PIT histogram, PIT QQ, stacked n(z), scatter and outliers in
   bins of i magnitude and of redshift, the latent a and b embeddings (PCA) coloured by redshift,
   and the IWAE log p(x) of clean photometry against the same galaxies with one band shifted by
   +-1.5 mag (the outlier score; its rank AUROC goes into the metrics).

Usage::

    python examples/dc2_main.py --out outputs/dc2                # the full job (a few minutes)
    python examples/dc2_main.py --out /tmp/q --n-train 400 --n-test 300 --epochs 3 --hidden 32,32

Everything the job writes goes into ``--out``::

    model_photovaez.pkl  output_estimate_photovaez.hdf5  metrics.json  metrics.md  plots/*.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from photovaez.metrics import POINT_METRICS, metric_rows

log = logging.getLogger("photovaez.dc2_main")


def _subset(table: dict, n: int | None, seed: int) -> dict:
    """A random subset of n rows (the DC2 files are sorted by redshift), or the whole table."""
    size = len(table["redshift"])
    if not n or n >= size:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(size, n, replace=False))
    return {k: np.asarray(v)[idx] for k, v in table.items()}


def corrupt(table: dict, seed: int, shift: float = 1.5) -> dict:
    """The same galaxies with one band each (at random) shifted by +-``shift`` magnitudes: a
    photometric glitch that the IWAE log p(x) should flag."""
    rng = np.random.default_rng(seed)
    out = {k: np.array(v, dtype=float, copy=True) if k.startswith("mag_") else v for k, v in table.items()}
    n = len(table["redshift"])
    band = rng.integers(0, 6, n)
    sign = rng.choice([-1.0, 1.0], n)
    for i, b in enumerate("ugrizy"):
        col = out[f"mag_{b}_lsst"]
        hit = (band == i) & (np.abs(col) < 90)
        col[hit] += sign[hit] * shift
    return out


def _outlier_scores(model_dict: dict, table: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from photovaez.api import load_predictor, log_px

    pred = load_predictor(model_dict)
    return log_px(pred, table, seed=seed), log_px(pred, corrupt(table, seed), seed=seed)


def _markdown(metrics: dict, rail_summary: dict) -> str:
    keys = ("n", "cdeloss", "pit_ks", "pit_cvm", "pit_ad", "pit_outlier_rate", *POINT_METRICS)
    rows = [(label, metrics[key], fmt) for key, label, fmt in metric_rows(keys, "zmode")]
    rows.append(("log p(x) AUROC, clean vs one band +-1.5 mag", metrics.get("log_px_auroc", float("nan")), "{:.3f}"))
    lines = ["| metric | PhotoVAEz |", "|---|---|"]
    lines += [f"| {name} | {fmt.format(value)} |" for name, value, fmt in rows]
    if rail_summary:
        lines += ["", "RAIL SingleEvaluator summary:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {float(np.ravel(v)[0]):.5g} |" for k, v in sorted(rail_summary.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/dc2", help="output folder (default: outputs/dc2)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the informer's default)")
    p.add_argument("--hidden", default=None, help="hidden widths, e.g. 512,256,128 (default: the informer's)")
    p.add_argument("--n-train", type=int, default=None, help="random subset of the training file (default: all)")
    p.add_argument("--n-test", type=int, default=None, help="random subset of the validation file (default: all)")
    p.add_argument("--chunk-size", type=int, default=5000, help="estimation chunk size (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and of the subsets (default: 0)")
    p.add_argument("--no-rail-evaluator", action="store_true", help="skip RAIL's SingleEvaluator")
    p.add_argument("--n-latent", type=int, default=2000,
                   help="validation galaxies in the latent-embedding and outlier-score plots (default: 2000)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from photovaez import metrics, plots
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer
    from rail.photovaez.data import read_dc2

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    train = read_dc2("training", args.n_train, args.seed)
    valid = read_dc2("validation", args.n_test, args.seed + 1)

    train_cfg = dict(name="inform_photovaez", hdf5_groupname="", model=os.path.join(out, "model_photovaez.pkl"),
                     seed=args.seed, progress=True)
    if args.epochs:
        train_cfg["epochs"] = args.epochs
    if args.hidden:
        train_cfg["hidden"] = [int(h) for h in args.hidden.split(",")]

    cwd = os.getcwd()
    os.chdir(out)  # RAIL stages write their outputs into the working directory
    try:
        t0 = time.perf_counter()
        inform = PhotoVAEzInformer.make_stage(**train_cfg)
        model = inform.inform(train)
        t_inform = time.perf_counter() - t0
        log.info("inform: %.1f s", t_inform)

        t0 = time.perf_counter()
        estimate = PhotoVAEzEstimator.make_stage(
            name="estimate_photovaez", hdf5_groupname="", model=model, chunk_size=args.chunk_size,
            output=os.path.join(out, "output_estimate_photovaez.hdf5"),
        )
        ens = estimate.estimate(valid).data
        t_estimate = time.perf_counter() - t0
        log.info("estimate %d galaxies: %.1f s", ens.npdf, t_estimate)

        rail_summary = {}
        if not args.no_rail_evaluator:
            from rail.core.data import QPHandle, TableHandle
            from rail.evaluation.single_evaluator import SingleEvaluator

            se = SingleEvaluator.make_stage(
                name="evaluate_photovaez", hdf5_groupname="", point_estimates=["zmode"],
                truth_point_estimates=["redshift"], force_exact=True,
                metrics=["cdeloss", "pit", "point_stats_iqr", "point_bias", "point_outlier_rate",
                         "point_stats_sigma_mad"],
            )
            res = se.evaluate(QPHandle("pdfs", data=ens), TableHandle("truth", data=valid))
            rail_summary = {k: np.asarray(v) for k, v in res["summary"].data.items()}
    finally:
        os.chdir(cwd)

    ztrue = np.asarray(valid["redshift"], dtype=float)
    zgrid = np.ravel(ens.metadata["xvals"])
    pdfs = ens.objdata["yvals"]
    zmode = np.ravel(ens.ancil["zmode"])
    m = metrics.evaluate(zgrid, pdfs, ztrue, zmode)
    m.update(inform_wall_s=t_inform, estimate_wall_s=t_estimate,
             training_report={k: v for k, v in model.data["report"].items() if k != "history"})
    pd = os.path.join(out, "plots")
    plots.plot_zphot_zspec(zgrid, pdfs, ztrue, os.path.join(pd, "zphot_zspec.png"), zpoint=zmode)
    plots.plot_pit_hist(zgrid, pdfs, ztrue, os.path.join(pd, "pit_hist.png"))
    plots.plot_pit_qq(zgrid, pdfs, ztrue, os.path.join(pd, "pit_qq.png"))
    plots.plot_nz(zgrid, pdfs, ztrue, os.path.join(pd, "nz.png"))
    plots.plot_metrics_vs_mag(zgrid, pdfs, ztrue, np.asarray(valid["mag_i_lsst"]), os.path.join(pd, "metrics_vs_mag_i.png"))
    plots.plot_metrics_vs_z(zgrid, pdfs, ztrue, os.path.join(pd, "metrics_vs_z.png"))
    # the latent space and the log p(x) outlier score, on a random subset of the validation galaxies
    sub = _subset(valid, args.n_latent, args.seed + 1)
    plots.plot_latent_embeddings(model.data, sub, os.path.join(pd, "latent_embeddings.png"),
                                 ztrue=np.asarray(sub["redshift"], float))
    clean_px, corrupted_px = _outlier_scores(model.data, sub, args.seed)
    plots.plot_outlier_scores(clean_px, corrupted_px, os.path.join(pd, "outlier_scores.png"))
    m["log_px_auroc"] = plots.rank_auroc(clean_px, corrupted_px)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"photovaez": m, "rail_single_evaluator": {k: float(np.ravel(v)[0]) for k, v in rail_summary.items()}},
                  f, indent=2, default=float)
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write(_markdown(m, rail_summary))
    print(_markdown(m, rail_summary))
    log.info("wrote %s", out)
    return m


if __name__ == "__main__":
    main()
