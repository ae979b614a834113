#!/usr/bin/env python
"""GPU check and timing of PhotoVAEz (run by benchmarks/gpu.sh on a machine with CUDA).

Uses only the core package (no RAIL, qp or tables_io, which a GPU image may lack):

1. trains briefly on DC2 ``full`` with ``device="auto"`` (CUDA) and reports seconds per epoch;
2. synthesises ``--n-galaxies`` galaxies from the DC2 validation sample (rows drawn with
   replacement, magnitudes resampled from their errors) and times the amortised PDFs (compiled
   JAX) on every GPU, beside the arithmetic limit: the measured float32 rate of the networks'
   largest matrix product divided by the network FLOPs per galaxy;
3. times the model-posterior modes (grid with the amortised support, snis, auto, hmc, joint) in
   JAX on the GPU on subsets (snis with its arithmetic limit from the draws it used);
4. checks CPU-vs-GPU agreement: amortised PDFs and grid-posterior PDFs (JAX) of the
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
        # the draw's width clipped at 2 mag (FeatureSpec.max_mag_err): DC2's u errors reach 86 mag
        out[f"mag_{b}_lsst"] = np.where(det, m + np.minimum(e, 2.0) * rng.standard_normal(n), m)
    return out


def matmul_rate(device) -> float:
    """float32 FLOP/s of an (65536, 512) x (512, 256) product in JAX on ``device`` (the networks'
    largest layer shape; JAX's default precision, TF32 on NVIDIA tensor cores)."""
    import jax
    import jax.numpy as jnp

    with jax.default_device(device):
        a, b = jnp.ones((65536, 512), jnp.float32), jnp.ones((512, 256), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        best = np.inf
        for _ in range(20):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
    return 2 * 65536 * 512 * 256 / best


def draw_flops(params) -> float:
    """FLOPs of one importance draw: 2 x the weights of q(z|b,x), q(a|x,b,z), p(b|a,z) and the
    sed decoder's network (or the mlp decoder)."""
    import jax

    nets = [n for n in ("q_z_given_bx", "q_a_given_xbz", "p_b_given_az", "p_x_given_abz") if n in params]
    size = sum(w.size for n in nets for w in jax.tree_util.tree_leaves(params[n]) if w.ndim == 2)
    if "sed" in params:
        size += sum(w.size for w in jax.tree_util.tree_leaves(params["sed"]) if getattr(w, "ndim", 0) == 2
                    and max(w.shape) <= 512)
    return 2.0 * size


def cdf_diff(zgrid: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from photovaez.grid import cdf_on_grid

    return float(np.max(np.abs(cdf_on_grid(zgrid, a) - cdf_on_grid(zgrid, b))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="DC2 training hdf5")
    p.add_argument("--valid", required=True, help="DC2 validation hdf5")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-galaxies", type=int, default=1_000_000)
    p.add_argument("--n-posterior", type=int, default=10_000, help="galaxies for grid/snis")
    p.add_argument("--n-hmc", type=int, default=2_000)
    p.add_argument("--out", default="gpu_results.json")
    args = p.parse_args()

    import torch

    from photovaez import api
    from photovaez.amortised import flops_per_galaxy, jax_device
    from photovaez.config import EstimateConfig
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
    try:  # the sed decoder's filters and templates are RAIL package data
        from rail.photovaez.data import rail_resolver as resolve

        decoder = "sed"
    except ImportError:
        resolve, decoder = None, "mlp"
    t0 = time.perf_counter()
    model = api.fit(train, model_config=dict(decoder=decoder), resolve=resolve,
                    train_config=dict(epochs=args.epochs, device="auto", progress=False, patience=1000))
    rep = model["report"]
    report(step="train", epochs=rep["epochs_run"], wall_s=time.perf_counter() - t0,
           s_per_epoch=rep["wall_time_s"] / max(rep["epochs_run"], 1), device=rep["device"],
           skipped=rep["n_skipped"], steps=rep["n_steps"])

    pred = api.load_predictor(model)
    zgrid = redshift_grid(0.0, 3.0, 301)
    cat = synthesise(valid, args.n_galaxies)
    n_b = EstimateConfig().n_b_samples
    work = flops_per_galaxy(pred.jax_params, n_b, len(zgrid))["network_flops"]
    devices = [f"cuda:{k}" for k in range(len(jax.devices("gpu")))] if jax.default_backend() == "gpu" else ["cpu"]
    for dev_k in devices:
        rate = matmul_rate(jax_device(dev_k))
        # compile the shape of the timed run's calls (8192 rows: two calls of the largest shape)
        api.estimate(pred, {k: v[:8192] for k, v in cat.items()}, zgrid, device=dev_k)
        t0 = time.perf_counter()
        pdfs, _ = api.estimate(pred, cat, zgrid, device=dev_k)
        dt = time.perf_counter() - t0
        report(step="amortized", device=dev_k, n=args.n_galaxies, n_b=n_b, wall_s=dt, gal_per_s=args.n_galaxies / dt,
               network_flops_per_galaxy=work, matmul_tflops=rate / 1e12, arithmetic_limit_gal_per_s=rate / work)

    sub = {k: v[:1000] for k, v in cat.items()}
    cpu_pdfs, _ = api.estimate(pred, sub, zgrid, device="cpu")
    report(step="agree_amortized_cpu_gpu", n=1000, max_cdf_diff=cdf_diff(zgrid, cpu_pdfs, pdfs[:1000]))
    rate = matmul_rate(jax_device(devices[0]))
    per_draw = draw_flops(pred.jax_params)

    def posterior(predictor, table, mode, n_importance, **settings):
        return api.estimate(predictor, table, zgrid, mode=mode, n_samples=n_importance, **settings)

    modes = [("grid", dict(n_importance=64, support_tol=1e-4), args.n_posterior),
             ("snis", dict(n_importance=512), args.n_posterior),
             ("auto", dict(n_importance=512), args.n_posterior),
             ("hmc", dict(n_importance=16, num_warmup=150, num_samples=300, max_tree_depth=5), args.n_hmc),
             ("joint", dict(n_importance=2), args.n_hmc)]
    for mode, kw, n in modes:
        warm = {k: v[:64] for k, v in cat.items()}
        posterior(pred, warm, mode, **kw)  # compile
        t0 = time.perf_counter()
        pp, anc = posterior(pred, {k: v[:n] for k, v in cat.items()}, mode, **kw)
        dt = time.perf_counter() - t0
        extra = {}
        if mode in ("hmc", "joint"):
            extra = dict(divergences=int(np.sum(anc["divergences"])), median_ess=float(np.median(anc["ess"])))
        if "n_draws" in anc:  # snis: every draw evaluates q(z|b,x), q(a|x,b,z), p(b|a,z) and the decoder
            draws = float(np.mean(anc["n_draws"]))
            extra.update(mean_draws=draws, arithmetic_limit_gal_per_s=rate / (per_draw * draws))
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
