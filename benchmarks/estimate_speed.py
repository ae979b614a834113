#!/usr/bin/env python
"""Speed and accuracy of the amortised PDFs through ``PhotoVAEzEstimator``, against GPz timed the same way.

    python benchmarks/estimate_speed.py --model /tmp/models/model_full_sed.pkl   # e.g. from dc2.py --save-models

1. Speed: the RAIL stage reads the DC2 validation *file* (20,449 galaxies) in chunks of
   ``--chunk-size`` and writes its ensemble to a file (``output``) or keeps it
   (``output_mode="return"``); PhotoVAEz and GPz (informed once on the DC2 training file with
   RAIL's defaults) are timed alternately in one process, ``--repeat`` times each, warm (the first,
   compiling run is reported apart).
2. Work: network FLOPs per galaxy (:func:`photovaez.amortised.flops_per_galaxy`) and the
   arithmetic limit, the float32 matrix-product rate measured here (a (4096, 512) x (512, 256) product
   in JAX) divided by those FLOPs.
3. Accuracy, against the PDFs before the speed-up: the previous algorithm (16 independent b draws
   through the torch networks, the tempered mixture on the grid) is re-run here with seeds 0-4,
   which gives the metrics' noise; the new default (8 antithetic orthogonal draws, compiled JAX)
   and the converged mixture (``--n-converged`` draws) are compared with it: sigma_NMAD, outlier
   rate, PIT KS, CDE loss, and max|dCDF| against the converged mixture.

Writes ``<out>/estimate_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def time_stage(make, path: str, chunk_size: int, mode: str, tmp: str, tag: str) -> float:
    """Wall time of one ``run()`` + ``finalize()`` of the estimator made by ``make(**kw)``."""
    kw = dict(name=f"speed_{tag}", chunk_size=chunk_size, hdf5_groupname="photometry")
    kw.update(output_mode="return") if mode == "return" else kw.update(output=os.path.join(tmp, f"{tag}.hdf5"))
    est = make(**kw)
    est.set_data("input", None, path=path)
    t0 = time.perf_counter()
    est.run()
    est.finalize()
    return time.perf_counter() - t0


def matmul_gflops(repeat: int = 20) -> float:
    """float32 rate of a (4096, 512) x (512, 256) product in JAX on this machine [GFLOP/s]."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((4096, 512), jnp.float32)
    b = jnp.ones((512, 256), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 * 512 * 256 / best / 1e9


def previous_pdfs(predictor, x: np.ndarray, zgrid: np.ndarray, seed: int, n_b: int = 16) -> np.ndarray:
    """The amortised PDFs as computed before the speed-up: ``n_b`` independent standard-normal b
    draws (torch generator seeded by ``seed``), the torch networks, the mixture on the grid, the
    calibration temperature."""
    import torch

    from photovaez.calibration import apply_temperature
    from photovaez.mixture import lognormal_mixture_on_grid

    model = predictor.model
    eps = torch.randn((n_b, model.config.dim_b), generator=torch.Generator().manual_seed(seed))
    locs, scales = [], []
    with torch.no_grad():
        for s in range(0, len(x), 8192):
            xb = torch.as_tensor(x[s : s + 8192], dtype=torch.float32)
            q = model.q_z_given_bx(model.b_samples(xb, eps), xb.expand(n_b, -1, -1))
            locs.append(q.loc.T.numpy())
            scales.append(q.scale.T.numpy())
    raw = lognormal_mixture_on_grid(np.concatenate(locs), np.concatenate(scales), zgrid)
    return apply_temperature(zgrid, raw, predictor.temperature)[0]


def converged_pdfs(predictor, x: np.ndarray, zgrid: np.ndarray, n_draws: int) -> np.ndarray:
    """The mixture with ``n_draws`` b draws (blocks of 64 with their own seeds), tempered."""
    from photovaez.amortised import q_z_given_x_components
    from photovaez.calibration import apply_temperature
    from photovaez.mixture import lognormal_mixture_on_grid

    n_blocks = max(1, n_draws // 64)
    total = 0.0
    for s in range(n_blocks):
        loc, scale = q_z_given_x_components(predictor.jax_params, x, n_b=64, seed=1000 + s)
        total = total + lognormal_mixture_on_grid(loc, scale, zgrid) / n_blocks
    return apply_temperature(zgrid, total, predictor.temperature)[0]


def metrics(zgrid: np.ndarray, pdfs: np.ndarray, ztrue: np.ndarray) -> dict[str, float]:
    from photovaez.grid import point_estimates
    from photovaez.metrics import cde_loss, ks_uniform, pit_values, point_metrics

    pm = point_metrics(point_estimates(zgrid, pdfs)["zmode"], ztrue)
    return {"sigma_nmad": pm["sigma_nmad"], "outlier_rate": pm["outlier_rate"],
            "pit_ks": float(ks_uniform(pit_values(zgrid, pdfs, ztrue))),
            "cde_loss": float(cde_loss(zgrid, pdfs, ztrue))}


def max_dcdf(zgrid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from photovaez.grid import cdf_on_grid

    return np.abs(cdf_on_grid(zgrid, a) - cdf_on_grid(zgrid, b)).max(axis=1)


def gpz_factory(train_path: str, tmp: str):
    """A GPz estimator factory, GPz informed on the DC2 training file with RAIL's defaults."""
    from rail.core.data import DataStore
    from rail.estimation.algos.gpz import GPzEstimator, GPzInformer

    from rail.photovaez.data import read_dc2

    DataStore.allow_overwrite = True  # the timed stages reuse handle names
    inf = GPzInformer.make_stage(name="gpz_inform", hdf5_groupname="", model=os.path.join(tmp, "gpz.pkl"))
    t0 = time.perf_counter()
    inf.inform(read_dc2(train_path))
    inform_s = time.perf_counter() - t0
    model = inf.get_handle("model").data
    return (lambda **kw: GPzEstimator.make_stage(model=model, **kw)), inform_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a PhotoVAEz model file (outside the repository)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=10000)
    ap.add_argument("--n-converged", type=int, default=512, help="b draws of the converged mixture")
    ap.add_argument("--no-gpz", action="store_true", help="skip GPz")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    import jax
    import torch
    from rail.core.data import DataStore

    from photovaez.amortised import flops_per_galaxy
    from photovaez.api import load_predictor
    from photovaez.config import EstimateConfig
    from photovaez.grid import redshift_grid
    from photovaez.io import load_model
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator
    from rail.photovaez.data import dc2_path, read_dc2

    DataStore.allow_overwrite = True  # the timed stages reuse handle names
    valid_path, train_path = dc2_path("validation"), dc2_path("training")
    model = load_model(args.model)
    res: dict = {"model": os.path.basename(args.model), "chunk_size": args.chunk_size, "cpu_count": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "machine": platform.processor()}
    with tempfile.TemporaryDirectory() as tmp:
        makers = {"PhotoVAEz": lambda **kw: PhotoVAEzEstimator.make_stage(model=model, **kw)}
        if not args.no_gpz:
            makers["GPz"], res["gpz_inform_s"] = gpz_factory(train_path, tmp)
        n = len(read_dc2("validation")["redshift"])
        res["n_galaxies"] = n
        runs: dict = {f"{name}/{mode}": [] for name in makers for mode in ("file", "return")}
        for name, make in makers.items():  # the first (compiling) run of each
            res[f"{name}_first_run_s"] = time_stage(make, valid_path, args.chunk_size, "file", tmp, f"{name}_first")
        for i in range(args.repeat):  # alternately
            for name, make in makers.items():
                for mode in ("file", "return"):
                    runs[f"{name}/{mode}"].append(time_stage(make, valid_path, args.chunk_size, mode, tmp,
                                                             f"{name}_{mode}_{i}"))
    res["runs_s"] = runs
    res["galaxies_per_s"] = {k: n / min(v) for k, v in runs.items()}

    pred = load_predictor(model)
    zgrid = redshift_grid(0.0, 3.0, 301)
    n_b = EstimateConfig().n_b_samples
    work = flops_per_galaxy(pred.jax_params, n_b, len(zgrid))
    gflops = matmul_gflops()
    st, h1 = pred.jax_params["static"], pred.jax_params["q_z_given_bx"]["layers"][0][0].shape[1]
    # before: 16 draws, each with the whole first layer of q(z|b,x) ([x, b_k] W)
    previous = flops_per_galaxy(pred.jax_params, 16, len(zgrid))["network_flops"] + 2 * (15 * st.dim_x * h1)
    res.update(n_b=n_b, network_flops_per_galaxy=work["network_flops"],
               grid_evaluations_per_galaxy=work["grid_evaluations"], matmul_gflops=gflops,
               arithmetic_limit_galaxies_per_s=gflops * 1e9 / work["network_flops"],
               previous_network_flops_per_galaxy=previous)

    # accuracy: previous algorithm (5 seeds) vs the new default vs the converged mixture
    table = read_dc2("validation")
    ztrue = np.asarray(table["redshift"], np.float64)
    x, _ = pred.observations(table)
    from photovaez.api import estimate

    new, _ = estimate(pred, table, zgrid, n_samples=n_b, seed=0)
    conv = converged_pdfs(pred, x, zgrid, args.n_converged)
    prev = [previous_pdfs(pred, x, zgrid, seed=s) for s in range(5)]
    acc = {"previous": [metrics(zgrid, p, ztrue) for p in prev], "new": metrics(zgrid, new, ztrue),
           "converged": metrics(zgrid, conv, ztrue)}
    d_prev = [max_dcdf(zgrid, p, conv) for p in prev]
    d_new = max_dcdf(zgrid, new, conv)
    acc["max_dcdf_vs_converged"] = {
        "previous_median": float(np.mean([np.median(d) for d in d_prev])),
        "previous_p90": float(np.mean([np.quantile(d, 0.9) for d in d_prev])),
        "new_median": float(np.median(d_new)), "new_p90": float(np.quantile(d_new, 0.9))}
    d_pn = max_dcdf(zgrid, new, prev[0])
    acc["max_dcdf_new_vs_previous"] = {"median": float(np.median(d_pn)), "p90": float(np.quantile(d_pn, 0.9)),
                                       "max": float(d_pn.max())}
    res["accuracy"] = acc

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "estimate_speed.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "estimate_speed.md"), "w") as f:
        f.write(markdown(res))
    print(json.dumps({k: v for k, v in res.items() if k != "accuracy"}))


def markdown(res: dict) -> str:
    n = res["n_galaxies"]
    lines = [f"# Amortised estimation speed ({res['model']}, DC2 validation file, {n:,} galaxies, chunks of "
             f"{res['chunk_size']:,}, {res['cpu_count']} CPU cores)", "",
             "| estimator / output | warm runs [s] | best [s] | galaxies/s |", "|---|---|---:|---:|"]
    for key, runs in res["runs_s"].items():
        lines.append(f"| {key} | {', '.join(f'{t:.2f}' for t in runs)} | {min(runs):.2f} | "
                     f"{res['galaxies_per_s'][key]:,.0f} |")
    lines += ["", f"First (compiling) run, file output: PhotoVAEz {res['PhotoVAEz_first_run_s']:.1f} s"
              + (f", GPz {res['GPz_first_run_s']:.1f} s (GPz inform {res['gpz_inform_s']:.0f} s)." if "GPz_first_run_s"
                 in res else "."), "",
              f"Work per galaxy: {res['network_flops_per_galaxy'] / 1e6:.2f} MFLOP in the networks with n_b = "
              f"{res['n_b']} (before: {res['previous_network_flops_per_galaxy'] / 1e6:.2f} MFLOP with 16 draws and "
              f"the x-part of the first layer per draw), {res['grid_evaluations_per_galaxy']:,} normal CDF/density "
              f"evaluations on the grid. float32 matrix products here: {res['matmul_gflops']:.0f} GFLOP/s, so the "
              f"networks alone allow at most {res['arithmetic_limit_galaxies_per_s']:,.0f} galaxies/s.", "",
              "| PDFs | sigma_NMAD | outlier rate | PIT KS | CDE loss |", "|---|---:|---:|---:|---:|"]
    acc = res["accuracy"]
    keys = ("sigma_nmad", "outlier_rate", "pit_ks", "cde_loss")
    prev = {k: np.array([m[k] for m in acc["previous"]]) for k in keys}
    lines.append("| before: 16 independent draws, seeds 0-4 (mean +- sd) | "
                 + " | ".join(f"{prev[k].mean():.4f} +- {prev[k].std(ddof=1):.4f}" for k in keys) + " |")
    lines.append("| now: 8 antithetic orthogonal draws | " + " | ".join(f"{acc['new'][k]:.4f}" for k in keys) + " |")
    lines.append("| converged mixture | " + " | ".join(f"{acc['converged'][k]:.4f}" for k in keys) + " |")
    d = acc["max_dcdf_vs_converged"]
    dn = acc["max_dcdf_new_vs_previous"]
    lines += ["", "max|dCDF| against the converged mixture, median / p90 over galaxies: before "
              f"{d['previous_median']:.4f}"
              f" / {d['previous_p90']:.4f} (mean over the 5 seeds), now {d['new_median']:.4f} / {d['new_p90']:.4f}. "
              f"Now against before (seed 0): median {dn['median']:.4f}, p90 {dn['p90']:.4f}, max {dn['max']:.4f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
