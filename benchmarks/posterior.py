#!/usr/bin/env python
"""Benchmark of the model-posterior modes against the amortised q(z|x) on DC2.

A model trained on the DC2 ``full`` scenario (all 10,225 training galaxies labelled) -- trained
briefly here, or loaded with ``--model`` from a path outside the repository -- estimates a random
subset of the DC2 validation galaxies (``np.random.default_rng(seed)``) on RAIL's default grid
``linspace(0, 3, 301)`` with each mode:

``amortised``  :func:`photovaez.api.estimate` (mixture of log-normals, Eq. 20-22)
``grid``       importance-sampled log p(x, z) on the grid, normalised exactly
``hmc``        NUTS in log z, one chain per galaxy, Gaussian KDE in log z cell-averaged on the grid
``snis``       self-normalised importance sampling of (z, a, b) from the encoder

For each mode it reports the wall time of the first call (with JIT compilation) and of a second,
warm call on the same galaxies (galaxies/s from the warm call), the PIT KS / CvM statistics, the
CDE loss and point metrics (:func:`photovaez.metrics.evaluate`), the mean and max over galaxies of
``max_z |CDF_mode - CDF_amortised|``, and the importance-sampling diagnostics: the Kish ESS of the
N weights at the posterior mode (grid), of the IWAE log p(x) weights (log_px, snis), and the HMC
divergences and ESS.

Outputs ``<out>/posterior[_<tag>].json`` and ``.md``.  No model file is written unless
``--save-model PATH`` (refused inside the repository).

Usage::

    python benchmarks/posterior.py --epochs 10 --n-galaxies 200
    python benchmarks/posterior.py --model /tmp/model.pkl --modes amortised grid snis
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from photovaez.metrics import metric_rows

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")
MODES = ["amortised", "grid", "hmc", "snis"]


def get_model(args) -> tuple[dict, dict]:
    from photovaez import api
    from photovaez.io import load_model, save_model
    from rail.photovaez.data import read_dc2

    if args.model:
        return load_model(args.model), {"source": os.path.abspath(args.model)}
    import torch

    torch.set_num_threads(max(1, args.torch_threads))
    train = read_dc2("training")
    t0 = time.perf_counter()
    d = api.fit(train, model_config={"hidden": args.hidden, "dim_a": args.dim_latent, "dim_b": args.dim_latent},
                train_config={"epochs": args.epochs, "batch_size": 256, "learning_rate": 2e-3, "device": "cpu",
                              "progress": False, "min_epochs": args.epochs, "seed": args.seed})
    info = {"source": "trained here", "train_seconds": time.perf_counter() - t0, "epochs": args.epochs,
            "hidden": args.hidden, "dim_a": args.dim_latent, "dim_b": args.dim_latent,
            "n_train": int(len(train["redshift"]))}
    if args.save_model:
        path = os.path.abspath(args.save_model)
        if os.path.commonpath([path, REPO]) == REPO:
            raise SystemExit(f"--save-model {path}: refusing to write a model file inside the repository")
        save_model(d, path)
        info["saved_to"] = path
    return d, info


def cdf_distance(zgrid: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    from photovaez.grid import cdf_on_grid

    return np.abs(cdf_on_grid(zgrid, p) - cdf_on_grid(zgrid, q)).max(1)


def n_samples(mode: str, args) -> int:
    """b draws (amortised) or importance samples per galaxy of a mode."""
    return {"amortised": args.n_amortised, "grid": args.n_grid, "hmc": args.n_hmc, "snis": args.n_snis}[mode]


def run_mode(mode: str, predictor, table, zgrid, args) -> tuple[np.ndarray, dict, float, float]:
    from photovaez import api

    settings = {
        "amortised": {},
        "grid": dict(support_tol=args.support_tol),
        "hmc": dict(num_warmup=args.num_warmup, num_samples=args.num_samples, max_tree_depth=args.max_tree_depth),
        "snis": {},
    }[mode]
    n_log_px = None if mode == "amortised" else args.n_px  # the amortised PDFs come without log p(x)

    def call():
        return api.estimate(predictor, table, zgrid, mode=mode, n_samples=n_samples(mode, args), n_log_px=n_log_px,
                            seed=args.seed, **settings)

    t0 = time.perf_counter()
    pdfs, ancil = call()
    first = time.perf_counter() - t0
    warm = float("nan")
    if args.repeat > 1:
        t0 = time.perf_counter()
        pdfs, ancil = call()
        warm = time.perf_counter() - t0
    return pdfs, ancil, first, warm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="load this model file instead of training (outside the repository)")
    ap.add_argument("--save-model", help="write the trained model here (outside the repository)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--dim-latent", type=int, default=10, help="A = B")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--n-galaxies", type=int, default=200)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--n-amortised", type=int, default=16)
    ap.add_argument("--n-grid", type=int, default=128)
    ap.add_argument("--support-tol", type=float, default=1e-4,
                    help="grid: evaluate only where q(z|x) has mass; <0: all")
    ap.add_argument("--n-hmc", type=int, default=32)
    ap.add_argument("--num-warmup", type=int, default=200)
    ap.add_argument("--num-samples", type=int, default=300)
    ap.add_argument("--max-tree-depth", type=int, default=5)
    ap.add_argument("--n-snis", type=int, default=1024)
    ap.add_argument("--n-px", type=int, default=256, help="IWAE samples of log p(x)")
    ap.add_argument("--repeat", type=int, default=2, help="2: time a second, warm call too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--tag", default="", help="output files posterior_<tag>.json/.md (default: posterior.json/.md)")
    args = ap.parse_args(argv)
    if args.support_tol is not None and args.support_tol < 0:
        args.support_tol = None

    import jax

    from photovaez import api
    from photovaez.grid import redshift_grid
    from photovaez.metrics import evaluate
    from rail.photovaez.data import read_dc2

    model_dict, model_info = get_model(args)
    predictor = api.load_predictor(model_dict)
    table = read_dc2("validation", args.n_galaxies, seed=args.seed)
    ztrue = table["redshift"]
    zgrid = redshift_grid(0.0, 3.0, 301)

    results: dict = {}
    pdfs_by_mode: dict = {}
    for mode in args.modes:
        print(f"[posterior] {mode} ...", flush=True)
        pdfs, ancil, first, warm = run_mode(mode, predictor, table, zgrid, args)
        pdfs_by_mode[mode] = pdfs
        secs = warm if np.isfinite(warm) else first
        r = {"seconds_first_call": first, "seconds_warm_call": warm, "galaxies_per_second": args.n_galaxies / secs}
        r["n_importance"] = n_samples(mode, args)
        r.update({k: v for k, v in evaluate(zgrid, pdfs, ztrue, zpoint=ancil["zmode"]).items()})
        if "log_px" in ancil:
            r["log_px_median"] = float(np.median(ancil["log_px"]))
            r["kish_ess_log_px_median"] = float(np.median(ancil["kish_ess"]))
            r["kish_ess_log_px_min"] = float(np.min(ancil["kish_ess"]))
        if mode == "grid":
            r["support_tol"] = args.support_tol
            r["kish_ess_at_mode_median"] = float(np.nanmedian(ancil["ess_at_mode"]))
            r["kish_ess_at_mode_min"] = float(np.nanmin(ancil["ess_at_mode"]))
        if mode == "hmc":
            r.update(num_warmup=args.num_warmup, num_samples=args.num_samples, max_tree_depth=args.max_tree_depth,
                     divergences_total=int(np.sum(ancil["divergences"])),
                     galaxies_with_divergences=int(np.sum(ancil["divergences"] > 0)),
                     ess_median=float(np.median(ancil["ess"])), ess_min=float(np.min(ancil["ess"])))
        r["pdf_flag_nonzero"] = int(np.sum(ancil["pdf_flag"] != 0))
        results[mode] = r
        print(f"[posterior] {mode}: {r['galaxies_per_second']:.2f} gal/s, PIT KS {r['pit_ks']:.3f}, "
              f"CDE {r['cdeloss']:.3f}", flush=True)
    for ref in ("amortised", "grid"):
        if ref in pdfs_by_mode:
            for mode, p in pdfs_by_mode.items():
                if mode != ref:
                    d = cdf_distance(zgrid, p, pdfs_by_mode[ref])
                    results[mode][f"cdf_distance_vs_{ref}_mean"] = float(d.mean())
                    results[mode][f"cdf_distance_vs_{ref}_max"] = float(d.max())

    meta = {
        "n_galaxies": args.n_galaxies, "seed": args.seed, "grid": [0.0, 3.0, 301], "model": model_info,
        "model_config": model_dict["model_config"], "platform": platform.platform(),
        "python": sys.version.split()[0], "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(args.out, exist_ok=True)
    stem = "posterior" + (f"_{args.tag}" if args.tag else "")
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2, default=float)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(markdown(meta, results))
    print(markdown(meta, results))
    return 0


ROWS = [
    ("n_importance", "N (samples / galaxy)", "{}"),
    ("seconds_first_call", "first call, s (incl. compile)", "{:.2f}"),
    ("seconds_warm_call", "warm call, s", "{:.2f}"),
    ("galaxies_per_second", "galaxies / s (warm)", "{:.2f}"),
    *metric_rows(("pit_ks", "pit_cvm", "pit_outlier_rate", "cdeloss", "sigma_iqr", "bias", "outlier_rate"), "zmode"),
    ("cdf_distance_vs_amortised_mean", "mean max|dCDF| vs amortised", "{:.4f}"),
    ("cdf_distance_vs_grid_mean", "mean max|dCDF| vs grid", "{:.4f}"),
    ("kish_ess_at_mode_median", "Kish ESS at mode, median (grid)", "{:.1f}"),
    ("kish_ess_at_mode_min", "Kish ESS at mode, min (grid)", "{:.1f}"),
    ("kish_ess_log_px_median", "Kish ESS of log p(x) weights, median", "{:.1f}"),
    ("kish_ess_log_px_min", "Kish ESS of log p(x) weights, min", "{:.1f}"),
    ("log_px_median", "median log p(x)", "{:.2f}"),
    ("divergences_total", "HMC divergences", "{}"),
    ("ess_median", "HMC ESS median", "{:.0f}"),
    ("ess_min", "HMC ESS min", "{:.0f}"),
]


def markdown(meta: dict, results: dict) -> str:
    modes = list(results)
    lines = [
        "# Model posterior vs amortised PDFs (DC2)", "",
        f"{meta['n_galaxies']} DC2 validation galaxies, grid linspace(0, 3, 301), seed {meta['seed']}; "
        f"model: {meta['model']}; JAX {meta['jax']} on {meta['jax_backend']}, {meta['cpu_count']} CPU cores "
        f"({meta['platform']}).", "",
        "| metric | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for key, label, fmt in ROWS:
        if not any(key in results[m] for m in modes):
            continue
        cells = []
        for m in modes:
            v = results[m].get(key)
            cells.append("" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
