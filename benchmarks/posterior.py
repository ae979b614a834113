#!/usr/bin/env python
"""Benchmark of the model-posterior estimators against the amortised q(z|x) and a grid reference.

For each DC2 scenario (``full``, ``biased``, ``speczlike``: the labelled sets of
``benchmarks/dc2.py``) a trained model -- loaded from ``--models`` (a path with ``{scenario}``,
outside the repository) or trained here with the scenario's data and the default configuration --
estimates ``--n-galaxies`` random DC2 validation galaxies (``default_rng(seed).choice``, in the
drawn order, so the subsets below are random too) on RAIL's grid
``linspace(0, 3, 301)``:

``amortised``  the calibrated q(z|x)
``snis``       self-normalised importance sampling from the fitted proposal (defensive part, rounds)
``auto``       amortised inside the labelled support, snis outside (``auto_reason`` counts reported)
``joint``      NUTS on (log z, a, b), 2 chains per galaxy, on the first ``--n-joint`` galaxies
``reference``  the grid posterior with N = ``--n-reference-samples`` (4096) importance samples per
               redshift on the first ``--n-reference`` galaxies, evaluated where the amortised or the
               snis PDF has mass (``support_mask``, tol 1e-4, widened)

Reported per scenario: each mode's metrics (:func:`photovaez.metrics.evaluate`) on its galaxies; on
the reference galaxies, each mode's mean / 90th-percentile max|dCDF| from the reference and its PIT
KS minus the reference's (same galaxies); throughput (galaxies/s of a second, warm call; joint: its
only call after compiling on one chunk); and the importance sampling's Kish ESS of N = 512 joint
draws with the plain encoder (tau = 1), with the fitted proposal, and for snis as run (defensive
part and extra rounds).

Outputs ``<out>/posterior.json`` and ``posterior.md``.

Usage::

    python benchmarks/posterior.py --models /tmp/dc2_models/model_{scenario}_sed.pkl
    python benchmarks/posterior.py --scenarios biased --n-galaxies 500 --n-reference 50 --n-joint 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")
SCENARIOS = ["full", "biased", "speczlike"]
METRICS = ("pit_ks", "cdeloss", "sigma_nmad", "catastrophic_fraction")


def get_model(scenario: str, args) -> tuple[dict, dict]:
    """The scenario's model dict (loaded, or trained here) with the posterior tools, and where it came from."""
    sys.path.insert(0, HERE)
    from dc2 import scenario_data

    from photovaez import api
    from photovaez.io import load_model

    data = scenario_data(scenario)
    if args.models:
        path = os.path.abspath(args.models.format(scenario=scenario))
        d, info = load_model(path), {"source": path}
    else:
        t0 = time.perf_counter()
        d = api.fit(data["labelled"], data["unlabelled"], spec=data["spec"],
                    train_config={"seed": args.seed, "progress": False})
        info = {"source": "trained here", "train_seconds": time.perf_counter() - t0}
    if "labelled_support" not in d or "proposal" not in d:
        t0 = time.perf_counter()
        d = api.add_posterior_tools(d, data["labelled"], data["unlabelled"])
        info["posterior_tools_seconds"] = time.perf_counter() - t0
    info["proposal_fit"] = d.get("report", {}).get("proposal")
    return d, info


def cdf_distance(zgrid: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    from photovaez.grid import cdf_on_grid, normalise

    return np.abs(cdf_on_grid(zgrid, normalise(zgrid, p)[0]) - cdf_on_grid(zgrid, normalise(zgrid, q)[0])).max(1)


def timed(fn, repeat: int):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    warm = float("nan")
    if repeat > 1:
        t0 = time.perf_counter()
        out = fn()
        warm = time.perf_counter() - t0
    return out, first, warm


def ess_summary(ess: np.ndarray) -> dict:
    return {"median": float(np.median(ess)), "p10": float(np.percentile(ess, 10)), "min": float(np.min(ess))}


def run_scenario(scenario: str, args) -> dict:
    from photovaez import api
    from photovaez import posterior as P
    from photovaez.grid import redshift_grid
    from photovaez.metrics import evaluate
    from photovaez.proposal import identity_proposal
    from rail.photovaez.data import read_dc2

    model_dict, info = get_model(scenario, args)
    pred = api.load_predictor(model_dict)
    valid = read_dc2("validation")
    # random order (the DC2 files are sorted by redshift): the joint and reference subsets are its first rows
    idx = np.random.default_rng(args.seed).choice(len(valid["redshift"]), args.n_galaxies, replace=False)
    table = {k: np.asarray(v)[idx] for k, v in valid.items()}
    ztrue = table["redshift"]
    zgrid = redshift_grid(0.0, 3.0, 301)
    x, _ = pred.observations(table)
    out: dict = {"model": info, "n_galaxies": args.n_galaxies, "modes": {}}

    # the importance sampling's ESS: plain encoder vs the fitted proposal (N = 512, one round, no defensive part)
    params = pred.jax_params
    st = params["static"]
    plain = dict(params, proposal=identity_proposal(st.dim_a, st.dim_b, params["logz_mean"].dtype))
    out["kish_ess_512"] = {"plain_encoder": ess_summary(P.log_px(plain, x, 512, seed=args.seed).kish_ess),
                           "fitted_proposal": ess_summary(P.log_px(params, x, 512, seed=args.seed).kish_ess)}

    pdfs: dict = {}
    for mode, n_gal in (("amortised", args.n_galaxies), ("snis", args.n_galaxies), ("auto", args.n_galaxies),
                        ("joint", args.n_joint)):
        if n_gal <= 0 or mode not in args.modes:
            continue
        sub = {k: v[:n_gal] for k, v in table.items()}
        print(f"[posterior] {scenario}: {mode} on {n_gal} galaxies ...", flush=True)
        if mode == "joint":  # compile on one chunk, then time the whole call once
            api.estimate(pred, {k: v[:1] for k, v in sub.items()}, zgrid, mode=mode, n_log_px=0, seed=args.seed,
                         num_warmup=args.joint_warmup, num_samples=args.joint_samples)
            (p, anc), secs, _ = timed(lambda s=sub: api.estimate(pred, s, zgrid, mode="joint", n_log_px=0,
                                                                 seed=args.seed, num_warmup=args.joint_warmup,
                                                                 num_samples=args.joint_samples), 1)
            first = warm = secs
        else:
            (p, anc), first, warm = timed(lambda s=sub, m=mode: api.estimate(pred, s, zgrid, mode=m, seed=args.seed),
                                          args.repeat)
        pdfs[mode] = p
        r = {"n": n_gal, "seconds_first_call": first, "seconds_warm_call": warm,
             "galaxies_per_second": n_gal / (warm if np.isfinite(warm) else first)}
        r.update({k: float(v) for k, v in evaluate(zgrid, p, ztrue[:n_gal], zpoint=anc["zmode"]).items()
                  if np.isscalar(v)})
        if mode == "snis":
            r["kish_ess"] = ess_summary(anc["kish_ess"])
            r["mean_draws"] = float(np.mean(anc["n_draws"]))
        if mode == "auto":
            r["reasons"] = {int(k): int(np.sum(anc["auto_reason"] == k)) for k in range(4)}
            r["posterior_fraction"] = float(np.mean(anc["pdf_source"]))
        if mode == "joint":
            r.update(divergences_total=int(np.sum(anc["divergences"])), rhat_max=float(np.nanmax(anc["rhat"])),
                     rhat_over_1_01=int(np.sum(anc["rhat"] > 1.01)), ess_median=float(np.median(anc["ess"])))
        out["modes"][mode] = r
        print(f"[posterior] {scenario}: {mode}: {r['galaxies_per_second']:.1f} gal/s, PIT KS {r['pit_ks']:.4f}, "
              f"CDE {r['cdeloss']:.3f}, sigma_NMAD {r['sigma_nmad']:.4f}", flush=True)

    n_ref = min(args.n_reference, args.n_galaxies)
    if n_ref > 0:
        print(f"[posterior] {scenario}: grid reference, N = {args.n_reference_samples}, {n_ref} galaxies ...",
              flush=True)
        support = P.support_mask(zgrid, pdfs["amortised"][:n_ref])
        if "snis" in pdfs:
            support |= P.support_mask(zgrid, pdfs["snis"][:n_ref])
        t0 = time.perf_counter()
        ref = P.grid_posterior(params, x[:n_ref], zgrid, n_importance=args.n_reference_samples, seed=args.seed + 1,
                               support=support)
        secs = time.perf_counter() - t0
        zt = ztrue[:n_ref]
        m_ref = evaluate(zgrid, ref.pdf, zt)
        out["reference"] = {"n": n_ref, "n_importance": args.n_reference_samples, "seconds": secs,
                            "grid_points_evaluated_mean": float(ref.n_evaluated.mean()),
                            "kish_ess_at_mode": ess_summary(ref.ess_at_mode),
                            **{k: float(m_ref[k]) for k in METRICS}}
        for mode, p in pdfs.items():
            n = min(n_ref, len(p))
            d = cdf_distance(zgrid, p[:n], ref.pdf[:n])
            m_sub = evaluate(zgrid, p[:n], zt[:n])
            m_ref_n = m_ref if n == n_ref else evaluate(zgrid, ref.pdf[:n], zt[:n])
            out["modes"][mode].update(ref_n=n, ref_dcdf_mean=float(d.mean()), ref_dcdf_p90=float(np.percentile(d, 90)),
                                      ref_ks_difference=float(m_sub["pit_ks"] - m_ref_n["pit_ks"]))
    return out


def markdown(meta: dict, results: dict) -> str:
    lines = ["# Model posterior vs amortised PDFs (DC2, sed decoder)", "",
             f"{meta['n_galaxies']} random DC2 validation galaxies per scenario (joint HMC: the first "
             f"{meta['n_joint']}; grid reference with N = {meta['n_reference_samples']}: the first "
             f"{meta['n_reference']}), grid linspace(0, 3, 301), seed {meta['seed']}; JAX {meta['jax']} on "
             f"{meta['jax_backend']}, {meta['cpu_count']} CPU cores. Galaxies/s from a second (warm) call; "
             "joint's from its one call after compiling.", ""]
    rows = [("galaxies_per_second", "galaxies / s", "{:.1f}"), ("pit_ks", "PIT KS", "{:.4f}"),
            ("cdeloss", "CDE loss", "{:.3f}"), ("sigma_nmad", "sigma_NMAD", "{:.4f}"),
            ("catastrophic_fraction", "\\|dz\\|/(1+z) > 0.15", "{:.4f}"),
            ("ref_dcdf_mean", "mean max\\|dCDF\\| vs reference", "{:.4f}"),
            ("ref_dcdf_p90", "p90 max\\|dCDF\\| vs reference", "{:.4f}"),
            ("ref_ks_difference", "PIT KS minus reference's (same galaxies)", "{:+.4f}")]
    for scen, res in results.items():
        modes = list(res["modes"])
        ref = res.get("reference")
        lines += [f"## {scen}", "", "| metric | " + " | ".join(modes) + (" | reference |" if ref else " |"),
                  "|---|" + "---:|" * (len(modes) + bool(ref))]
        lines.append("| galaxies | " + " | ".join(str(int(res["modes"][m]["n"])) for m in modes)
                     + (f" | {ref['n']} |" if ref else " |"))
        for key, label, fmt in rows:
            cells = [fmt.format(res["modes"][m][key]) if key in res["modes"][m] else "" for m in modes]
            if ref:
                cells.append(fmt.format(ref[key]) if key in ref else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        e = res["kish_ess_512"]
        plain, fitted = e["plain_encoder"], e["fitted_proposal"]
        lines += ["", "Kish ESS of 512 joint draws (median / p10 / min): plain encoder "
                  f"{plain['median']:.1f} / {plain['p10']:.1f} / {plain['min']:.1f}, "
                  f"fitted proposal {fitted['median']:.1f} / {fitted['p10']:.1f} / {fitted['min']:.1f}."]
        if "snis" in res["modes"]:
            s = res["modes"]["snis"]
            lines.append(f"snis as run (defensive part, extra rounds where ESS < 64): {s['mean_draws']:.0f} draws per "
                         f"galaxy on average, Kish ESS {s['kish_ess']['median']:.1f} / {s['kish_ess']['p10']:.1f} / "
                         f"{s['kish_ess']['min']:.1f}.")
        if "auto" in res["modes"]:
            a = res["modes"]["auto"]
            lines.append(f"auto: reasons 0/1/2/3 (inside / edge, agrees / edge, disagrees / outside) = "
                         f"{'/'.join(str(a['reasons'][k]) for k in range(4))}; posterior used for "
                         f"{100 * a['posterior_fraction']:.1f}%.")
        if "joint" in res["modes"]:
            j = res["modes"]["joint"]
            lines.append(f"joint: {j['divergences_total']} divergences, max R-hat {j['rhat_max']:.3f} "
                         f"({j['rhat_over_1_01']} galaxies > 1.01), median ESS {j['ess_median']:.0f}.")
        if ref:
            lines.append(f"reference: {ref['seconds']:.0f} s, {ref['grid_points_evaluated_mean']:.0f} grid points per "
                         f"galaxy on average, Kish ESS at the mode {ref['kish_ess_at_mode']['median']:.0f} (median) / "
                         f"{ref['kish_ess_at_mode']['min']:.1f} (min) of {ref['n_importance']}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="model file per scenario, with {scenario} (outside the repository); "
                                     "default: train each here")
    ap.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    ap.add_argument("--modes", nargs="+", default=["amortised", "snis", "auto", "joint"],
                    choices=["amortised", "snis", "auto", "joint"])
    ap.add_argument("--n-galaxies", type=int, default=2000)
    ap.add_argument("--n-joint", type=int, default=50)
    ap.add_argument("--joint-warmup", type=int, default=300)
    ap.add_argument("--joint-samples", type=int, default=500)
    ap.add_argument("--n-reference", type=int, default=100)
    ap.add_argument("--n-reference-samples", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2, help="2: time a second, warm call too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--markdown-only", action="store_true", help="rewrite posterior.md from <out>/posterior.json")
    args = ap.parse_args(argv)
    if args.markdown_only:
        with open(os.path.join(args.out, "posterior.json")) as f:
            saved = json.load(f)
        md = markdown(saved["meta"], saved["results"])
        with open(os.path.join(args.out, "posterior.md"), "w") as f:
            f.write(md)
        print(md)
        return 0
    if "amortised" not in args.modes:
        args.modes = ["amortised", *args.modes]  # the reference's support needs it

    import jax

    results = {}
    for scen in args.scenarios:
        results[scen] = run_scenario(scen, args)
    meta = {"n_galaxies": args.n_galaxies, "n_joint": args.n_joint, "n_reference": args.n_reference,
            "n_reference_samples": args.n_reference_samples, "seed": args.seed, "platform": platform.platform(),
            "python": sys.version.split()[0], "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "cpu_count": os.cpu_count()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "posterior.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2, default=float)
    md = markdown(meta, results)
    with open(os.path.join(args.out, "posterior.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
