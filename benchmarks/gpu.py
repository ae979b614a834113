#!/usr/bin/env python
"""GPU check and timing of PhotoVAEz (run by benchmarks/gpu.sh on a machine with CUDA).

Uses only the core package (no RAIL, qp or tables_io, which a GPU image may lack):

1. trains briefly on DC2 ``full`` with ``device="auto"`` (CUDA) and reports seconds per epoch;
2. synthesises ``--n-galaxies`` galaxies from the DC2 validation sample (rows drawn with
   replacement, magnitudes resampled from their errors) and times the amortised PDFs on the GPU;
3. times the model-posterior modes (grid with the amortised support, snis, hmc) in JAX on the GPU
   on subsets;
4. checks CPU-vs-GPU agreement: amortised PDFs (torch) and grid-posterior PDFs (JAX) of the
   same galaxies, max |CDF difference|.

Prints one JSON line per measurement and writes them all to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def read_dc2(path: str) -> dict:
    """``rail.photovaez.data.read_dc2`` of a file, its module loaded from its path: importing the
    package ``rail.photovaez`` would import RAIL's stages, which a GPU image may lack."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "photovaez_dc2_data", os.path.join(HERE, "..", "src", "rail", "photovaez", "data.py"))
    data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data)
    return data.read_dc2(path)


def synthesise(table: dict, n: int, seed: int = 0) -> dict:
    """n galaxies drawn with replacement, detected magnitudes resampled from their errors."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(table["redshift"]), n)
    out = {k: v[idx] for k, v in table.items()}
    for b in "ugrizy":
        m, e = out[f"mag_{b}_lsst"].astype(float), out[f"mag_err_{b}_lsst"].astype(float)
        det = m < 90
        out[f"mag_{b}_lsst"] = np.where(det, m + e * rng.standard_normal(n), m)
    return out


def cdf_diff(zgrid: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from photovaez.grid import cdf_on_grid

    return float(np.max(np.abs(cdf_on_grid(zgrid, a) - cdf_on_grid(zgrid, b))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="DC2 training hdf5")
    p.add_argument("--valid", required=True, help="DC2 validation hdf5")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-galaxies", type=int, default=100_000)
    p.add_argument("--n-posterior", type=int, default=10_000, help="galaxies for grid/snis")
    p.add_argument("--n-hmc", type=int, default=2_000)
    p.add_argument("--out", default="gpu_results.json")
    args = p.parse_args()

    import torch

    from photovaez import api
    from photovaez.grid import redshift_grid

    results = []

    def report(**kw):
        results.append(kw)
        print(json.dumps(kw), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    report(step="device", torch=torch.__version__, device=dev,
           name=torch.cuda.get_device_name(0) if dev == "cuda" else "cpu")
    import jax

    report(step="jax", devices=[str(d) for d in jax.devices()])

    train, valid = read_dc2(args.train), read_dc2(args.valid)
    t0 = time.perf_counter()
    model = api.fit(train, train_config=dict(epochs=args.epochs, device="auto", progress=False, patience=1000))
    rep = model["report"]
    report(step="train", epochs=rep["epochs_run"], wall_s=time.perf_counter() - t0,
           s_per_epoch=rep["wall_time_s"] / max(rep["epochs_run"], 1), device=rep["device"],
           skipped=rep["n_skipped"], steps=rep["n_steps"])

    pred = api.load_predictor(model)
    zgrid = redshift_grid(0.0, 3.0, 301)
    cat = synthesise(valid, args.n_galaxies)
    api.estimate(pred, {k: v[:1000] for k, v in cat.items()}, zgrid, device=dev)  # warm-up
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    pdfs, _ = api.estimate(pred, cat, zgrid, device=dev)
    dt = time.perf_counter() - t0
    report(step="amortized", n=args.n_galaxies, n_b=16, wall_s=dt, gal_per_s=args.n_galaxies / dt)

    sub = {k: v[:1000] for k, v in cat.items()}
    cpu_pdfs, _ = api.estimate(pred, sub, zgrid, device="cpu")
    report(step="agree_amortized_cpu_gpu", n=1000, max_cdf_diff=cdf_diff(zgrid, cpu_pdfs, pdfs[:1000]))

    def posterior(predictor, table, mode, n_importance, **settings):
        return api.estimate(predictor, table, zgrid, mode=mode, n_samples=n_importance, **settings)

    modes = [("grid", dict(n_importance=64, support_tol=1e-4), args.n_posterior),
             ("snis", dict(n_importance=256), args.n_posterior),
             ("hmc", dict(n_importance=16, num_warmup=150, num_samples=300, max_tree_depth=5), args.n_hmc)]
    for mode, kw, n in modes:
        warm = {k: v[:64] for k, v in cat.items()}
        posterior(pred, warm, mode, **kw)  # compile
        t0 = time.perf_counter()
        pp, anc = posterior(pred, {k: v[:n] for k, v in cat.items()}, mode, **kw)
        dt = time.perf_counter() - t0
        extra = {}
        if mode == "hmc":
            extra = dict(divergences=int(np.sum(anc["divergences"])), median_ess=float(np.median(anc["ess"])))
        report(step=mode, n=n, wall_s=dt, gal_per_s=n / dt, settings=kw, **extra)

    # JAX grid posterior on the CPU vs the GPU, same galaxies and noise
    small = {k: v[:200] for k, v in cat.items()}
    g_gpu, _ = posterior(pred, small, "grid", n_importance=64, support_tol=1e-4)
    with jax.default_device(jax.devices("cpu")[0]):
        pred_cpu = api.load_predictor(model)
        g_cpu, _ = posterior(pred_cpu, small, "grid", n_importance=64, support_tol=1e-4)
    report(step="agree_grid_cpu_gpu", n=200, max_cdf_diff=cdf_diff(zgrid, g_cpu, g_gpu))


if __name__ == "__main__":
    main()
