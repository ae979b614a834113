#!/usr/bin/env python
"""PhotoVAEz against RAIL's own estimators on the scenarios of ``benchmarks/dc2.py``.

Every (estimator, scenario) pair is informed and estimated in its own subprocess, under a time
limit (``--timeout``), so that one failure, crash or memory blow-up cannot stop the others and the
peak RSS is per pair.  The scenarios and their data are those of ``benchmarks/dc2.py``
(:func:`dc2.scenario_data`): ``full``, ``scarce``, ``biased`` on RAIL's DC2 test sample and
``sdss`` (SDSS MGS, when its files are there).

* Supervised estimators are informed on the labelled rows only; PhotoVAEz also gets the
  unlabelled rows (the second input of ``PhotoVAEzInformer.inform``).
* Each estimator runs through its RAIL stages with RAIL's defaults apart from the column and grid
  options the data need (``hdf5_groupname=''``, ``redshift_col``, ``zmin/zmax/nzbins``, and for
  SDSS the bands ``u g r i z``, errors ``eu ...``, limits and ``ref_band``).
* Every estimator's ``qp.Ensemble`` is evaluated the same way: ``ens.pdf(grid)`` on the
  scenario's grid (``linspace(zmin, zmax, nzbins)``), then :func:`photovaez.metrics.evaluate`;
  the point metrics use the ensemble's ``zmode`` ancil when it has one, else the mode on the grid.

Outputs: ``<out>/compare.json`` and ``<out>/compare.md`` (rewritten after every pair, so partial
results survive an interrupted run).  Model and output files go to a temporary folder.

Usage::

    python benchmarks/compare.py                              # every importable estimator, all scenarios
    python benchmarks/compare.py --scenarios full --estimators trainZ KNearNeigh PhotoVAEz
    python benchmarks/compare.py --n-train 300 --n-test 200 --photovaez-epochs 2 --out /tmp/cmp
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
DEFAULT_OUT = os.path.join(HERE, "results")

# name -> (PyPI distribution, module under rail.estimation.algos, informer class, estimator class)
ESTIMATORS: dict[str, tuple[str, str, str, str]] = {
    "trainZ": ("pz-rail-base", "train_z", "TrainZInformer", "TrainZEstimator"),
    "KNearNeigh": ("pz-rail-sklearn", "k_nearneigh", "KNearNeighInformer", "KNearNeighEstimator"),
    "FlexZBoost": ("pz-rail-flexzboost", "flexzboost", "FlexZBoostInformer", "FlexZBoostEstimator"),
    "GPz": ("pz-rail-gpz-v1", "gpz", "GPzInformer", "GPzEstimator"),
    "DNF": ("pz-rail-dnf", "dnf", "DNFInformer", "DNFEstimator"),
    "CMNN": ("pz-rail-cmnn", "cmnn", "CMNNInformer", "CMNNEstimator"),
    "TPZlite": ("pz-rail-tpz", "tpz_lite", "TPZliteInformer", "TPZliteEstimator"),
    "BPZlite": ("pz-rail-bpz", "bpz_lite", "BPZliteInformer", "BPZliteEstimator"),
    "PhotoVAEz": ("pz-rail-photovaez", "photovaez", "PhotoVAEzInformer", "PhotoVAEzEstimator"),
    # last: ~19 GB and slow on the full DC2 sample
    "PZFlow": ("pz-rail-pzflow", "pzflow_nf", "PZFlowInformer", "PZFlowEstimator"),
}
SEMI_SUPERVISED = {"PhotoVAEz"}
RUN_LAST = ("PZFlow",)

# columns of the Markdown table, per scenario: (key, label, format)
TABLE_COLS = [
    ("sigma_nmad", "sigma_NMAD", "{:.4f}"),
    ("cdeloss", "CDE loss", "{:.3f}"),
    ("pit_ks", "PIT KS", "{:.4f}"),
    ("outlier_rate", "outlier rate", "{:.4f}"),
    ("inform_wall_s", "inform [s]", "{:.1f}"),
    ("estimate_wall_s", "estimate [s]", "{:.1f}"),
    ("peak_rss_mb", "peak RSS [MB]", "{:.0f}"),
]


def _module(name: str) -> str:
    return "rail.estimation.algos." + ESTIMATORS[name][1]


def importable(name: str) -> bool:
    """Whether the estimator's RAIL module can be found (without importing it)."""
    if name not in ESTIMATORS:
        return False
    try:
        return importlib.util.find_spec(_module(name)) is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------
# one (estimator, scenario) pair; runs in a subprocess


def _peak_rss_mb() -> float:
    scale = 1024.0 if sys.platform != "darwin" else 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / scale


def _subsample(table: dict | None, n: int | None, rng: np.random.Generator) -> dict | None:
    if table is None or not n:
        return table
    m = len(next(iter(table.values())))
    if n >= m:
        return table
    idx = np.sort(rng.choice(m, n, replace=False))
    return {k: v[idx] for k, v in table.items()}


def load_scenario(scenario: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> dict:
    """``dc2.scenario_data`` with optional random subsets (``n_train`` labelled rows, as many
    unlabelled rows at most, ``n_test`` rows to estimate)."""
    from dc2 import scenario_data

    d = scenario_data(scenario)
    rng = np.random.default_rng(seed)
    d["labelled"] = _subsample(d["labelled"], n_train, rng)
    d["unlabelled"] = _subsample(d["unlabelled"], n_train, rng)
    if n_test:
        m = len(d["ztrue"])
        if n_test < m:
            idx = np.sort(rng.choice(m, n_test, replace=False))
            d["test"] = {k: v[idx] for k, v in d["test"].items()}
            d["ztrue"] = np.asarray(d["ztrue"])[idx]
            d["mag"] = np.asarray(d["mag"])[idx]
    return d


def column_options(scenario: str, d: dict) -> dict:
    """Column / grid options for the data of a scenario (RAIL's defaults otherwise)."""
    zg = np.asarray(d["zgrid"])
    opts = dict(hdf5_groupname="", redshift_col=d["redshift_col"], zmin=float(zg[0]), zmax=float(zg[-1]),
                nzbins=int(len(zg)), dz=float((zg[-1] - zg[0]) / (len(zg) - 1)))
    if scenario == "sdss":
        spec = d["spec"]
        bands, errs = list(spec.bands), list(spec.err_bands)
        opts.update(
            bands=bands,
            err_bands=errs,
            ref_band="i",
            mag_limits={b: float(spec.mag_limits[b]) for b in bands},
            err_dict={**dict(zip(bands, errs)), d["redshift_col"]: None},
            # pzflow
            column_names=bands,
            err_names_dict=dict(zip(bands, errs)),
            # bpz
            filter_list=[f"SDSS_{b}" for b in bands],
            zp_errors=[0.01] * len(bands),
            replace_error_vals=[0.1] * len(bands),
        )
    return opts


def stage_config(cls, options: dict) -> dict:
    """The options a stage class knows (RAIL accepts unknown keys silently, so filter them)."""
    return {k: v for k, v in options.items() if k in cls.config_options}


def _as_vector(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


def run_pair(name: str, scenario: str, args) -> dict:
    from photovaez.grid import point_estimates
    from photovaez.metrics import evaluate

    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(ESTIMATORS)}")
    dist, mod, inf_name, est_name = ESTIMATORS[name]
    try:
        module = importlib.import_module(_module(name))
    except ImportError as exc:
        raise ImportError(f"{dist} not importable ({exc})") from None
    inf_cls, est_cls = getattr(module, inf_name), getattr(module, est_name)

    d = load_scenario(scenario, args.n_train, args.n_test, args.seed)
    zgrid = np.asarray(d["zgrid"], np.float64)
    opts = column_options(scenario, d)
    inf_opts, est_opts = dict(opts), dict(opts)
    if name == "PhotoVAEz":
        inf_opts.update(feature_preset="sdss_mgs" if scenario == "sdss" else "lsst", seed=args.seed)
        if args.photovaez_epochs is not None:
            inf_opts["epochs"] = int(args.photovaez_epochs)
        if args.photovaez_hidden:
            inf_opts["hidden"] = [int(h) for h in args.photovaez_hidden.split(",") if h]
        est_opts["seed"] = args.seed
    unlabelled = d["unlabelled"] if name in SEMI_SUPERVISED else None
    n_lab = len(d["labelled"][d["redshift_col"]])
    n_unl = 0 if unlabelled is None else len(next(iter(unlabelled.values())))

    work = tempfile.mkdtemp(prefix=f"compare_{name}_{scenario}_")
    cwd = os.getcwd()
    os.chdir(work)  # stages write their model / output files into the working folder
    try:
        inform = inf_cls.make_stage(name=f"inform_{name.lower()}", model=os.path.join(work, "model.pkl"),
                                    **stage_config(inf_cls, inf_opts))
        t0 = time.perf_counter()
        model = inform.inform(d["labelled"], unlabelled) if name in SEMI_SUPERVISED else inform.inform(d["labelled"])
        inform_s = time.perf_counter() - t0
        rss_inform = _peak_rss_mb()

        est = est_cls.make_stage(name=f"estimate_{name.lower()}", model=model, **stage_config(est_cls, est_opts))
        t0 = time.perf_counter()
        ens = est.estimate(d["test"]).data
        estimate_s = time.perf_counter() - t0
        rss = _peak_rss_mb()
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)

    ztrue = _as_vector(d["ztrue"])
    pdfs = np.asarray(ens.pdf(zgrid), dtype=np.float64).reshape(len(ztrue), len(zgrid))
    pdfs = np.where(np.isfinite(pdfs), np.clip(pdfs, 0.0, None), 0.0)
    anc = ens.ancil or {}
    if "zmode" in anc:
        zmode, zmode_source = _as_vector(anc["zmode"]), "ancil"
    else:
        zmode, zmode_source = point_estimates(zgrid, pdfs)["zmode"], "grid"
    n_empty = int(np.sum(pdfs.sum(axis=1) <= 0))
    if n_empty:  # a PDF that is zero on the whole grid: flat, so that evaluate can normalise it
        pdfs[pdfs.sum(axis=1) <= 0] = 1.0
    res = evaluate(zgrid, pdfs, ztrue, zpoint=zmode)
    return {
        "estimator": name,
        "scenario": scenario,
        "package": dist,
        "parameterization": type(ens.gen_obj).__name__ if hasattr(ens, "gen_obj") else str(ens.gen_func),
        "zmode_source": zmode_source,
        "n_empty_pdfs": n_empty,
        "n_labelled": int(n_lab),
        "n_unlabelled": int(n_unl),
        "n_estimated": int(len(ztrue)),
        "grid": [float(zgrid[0]), float(zgrid[-1]), int(len(zgrid))],
        "inform_options": {k: v for k, v in stage_config(inf_cls, inf_opts).items()},
        "inform_wall_s": inform_s,
        "estimate_wall_s": estimate_s,
        "peak_rss_inform_mb": rss_inform,
        "peak_rss_mb": rss,
        **res,
    }


def _worker(args) -> int:
    try:
        res = run_pair(args.worker, args.worker_scenario, args)
        rc = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        msg = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
        res = {"estimator": args.worker, "scenario": args.worker_scenario, "error": msg[:300],
               "traceback": traceback.format_exc()[-4000:]}
        rc = 1
    with open(args.result, "w") as fh:
        json.dump(res, fh, indent=1, default=_json_default)
    return rc


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ------------------------------------------------------------------------------------------------
# driver


def _cell(r: dict | None, key: str, fmt: str) -> str:
    if r is None:
        return "not run"
    v = r.get(key)
    if v is None:
        return ""
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def write_markdown(path: str, meta: dict, results: dict, estimators: list[str], scenarios: list[str]) -> None:
    head = ["estimator"]
    for s in scenarios:
        head += [f"{s}: {label}" for _, label, _ in TABLE_COLS]
    lines = [
        "# PhotoVAEz vs RAIL estimators",
        "",
        f"Generated by `benchmarks/compare.py` on {meta['date']} ({meta['host']}, {meta['device']}); "
        f"timeout {meta['timeout']:.0f} s per (estimator, scenario) subprocess; PhotoVAEz epochs = "
        f"{meta['photovaez_epochs']}.",
        "",
        "Scenarios and data as `benchmarks/dc2.py` (DC2: informed on `test_dc2_training_9816.hdf5`, "
        "estimated on `test_dc2_validation_9816.hdf5`, grid linspace(0, 3, 301); `sdss`: SDSS MGS, grid "
        "linspace(0, 0.4, 201))"
        + (f"; subsets: {meta['n_train']} training rows, {meta['n_test']} estimated rows"
           if meta.get("n_train") or meta.get("n_test") else "")
        + ". Supervised estimators see the labelled rows only; PhotoVAEz also the unlabelled ones. "
        "RAIL defaults except column/grid options. Every ensemble is evaluated as `ens.pdf(grid)` on the "
        "scenario grid by `photovaez.metrics.evaluate`; point metrics on `zmode` (the ensemble's ancil, "
        "else the mode on the grid); outlier rate: \\|ez\\| > max(0.06, 3 sigma_IQR). Wall times on the "
        "machine above, run one at a time; peak RSS per subprocess.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for e in estimators:
        cells = [e]
        for s in scenarios:
            r = results.get(f"{e}/{s}")
            if r is not None and "error" in r:
                cells += ["failed: " + _md_escape(r["error"])] + [""] * (len(TABLE_COLS) - 1)
            else:
                cells += [_cell(r, k, f) for k, _, f in TABLE_COLS]
        lines.append("| " + " | ".join(cells) + " |")
    if meta.get("not_installed"):
        lines += ["", "Not installed (left out): " + ", ".join(
            f"{n} (`{ESTIMATORS[n][0]}`)" for n in meta["not_installed"]) + "."]
    lines += [
        "",
        "Published / reference values on DC2 `full`: FlexZBoost sigma_NMAD ~0.020, KNearNeigh ~0.025 "
        "(RAIL KNN in the project's RAIL notes §4.5: sigma_MAD 0.0251, PIT KS 0.071, CDE loss -6.095).",
        "",
    ]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def _run_subprocess(cmd: list[str], timeout: float) -> tuple[int, str, bool]:
    """Run in a new session; on timeout kill the whole process group (estimators may fork)."""
    with tempfile.TemporaryFile(mode="w+") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        errf.seek(0)
        err = errf.read()
    return proc.returncode, err, timed_out


def main(argv=None) -> int:
    from dc2 import SCENARIOS, parse_scenarios

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--estimators", nargs="+", default=None,
                    help=f"estimators to run (default: every importable one of {list(ESTIMATORS)}); "
                         "comma-separated lists are accepted")
    ap.add_argument("--scenarios", nargs="+", default=None,
                    help=f"scenarios (default: {SCENARIOS}, sdss only when its data are there)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per (estimator, scenario) subprocess")
    ap.add_argument("--out", default=DEFAULT_OUT, help="folder for compare.json and compare.md")
    ap.add_argument("--photovaez-epochs", dest="photovaez_epochs", type=int, default=None,
                    help="PhotoVAEz maximum epochs (default: the stage's default)")
    ap.add_argument("--photovaez-hidden", dest="photovaez_hidden", default="",
                    help="PhotoVAEz hidden-layer widths, e.g. 16,16 (default: the stage's default)")
    ap.add_argument("--n-train", dest="n_train", type=int, default=None,
                    help="random subset: at most this many labelled (and unlabelled) training rows")
    ap.add_argument("--n-test", dest="n_test", type=int, default=None,
                    help="random subset: at most this many rows to estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-scenario", dest="worker_scenario", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return _worker(args)

    scenarios = parse_scenarios(ap, args.scenarios)
    not_installed: list[str] = []
    if args.estimators:
        estimators = [e for item in args.estimators for e in item.split(",") if e]
    else:
        estimators = [e for e in ESTIMATORS if importable(e)]
        not_installed = [e for e in ESTIMATORS if e not in estimators]
    # unknown or missing estimators still go to a worker: it reports them as failed
    order = [e for e in estimators if e not in RUN_LAST] + [e for e in estimators if e in RUN_LAST]

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    try:
        import torch

        device = "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
            f"CPU ({os.cpu_count()} cores)"
    except ImportError:
        device = f"CPU ({os.cpu_count()} cores)"
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node() or "unknown host",
        "device": device,
        "python": platform.python_version(),
        "timeout": args.timeout,
        "photovaez_epochs": args.photovaez_epochs if args.photovaez_epochs is not None else "stage default",
        "photovaez_hidden": args.photovaez_hidden or "stage default",
        "n_train": args.n_train,
        "n_test": args.n_test,
        "seed": args.seed,
        "estimators": estimators,
        "scenarios": scenarios,
        "not_installed": not_installed,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for e in estimators:
        dist = ESTIMATORS.get(e, (None,))[0]
        if dist:
            try:
                versions[dist] = version(dist)
            except PackageNotFoundError:
                versions[dist] = None
    meta["versions"] = versions

    jpath, mpath = os.path.join(out, "compare.json"), os.path.join(out, "compare.md")
    results: dict[str, dict] = {}

    def save() -> None:
        with open(jpath, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1, default=_json_default)
        write_markdown(mpath, meta, results, estimators, scenarios)

    for e in order:
        for s in scenarios:
            with tempfile.TemporaryDirectory() as tmp:
                rfile = os.path.join(tmp, "result.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, "--worker-scenario", s,
                       "--result", rfile, "--seed", str(args.seed)]
                for opt, val in (("--photovaez-epochs", args.photovaez_epochs), ("--n-train", args.n_train),
                                 ("--n-test", args.n_test)):
                    if val is not None:
                        cmd += [opt, str(val)]
                if args.photovaez_hidden:
                    cmd += ["--photovaez-hidden", args.photovaez_hidden]
                print(f"[compare] {e} / {s}: starting", flush=True)
                t0 = time.perf_counter()
                rc, err, timed_out = _run_subprocess(cmd, args.timeout)
                wall = time.perf_counter() - t0
                r = None
                if os.path.exists(rfile):
                    with open(rfile) as fh:
                        r = json.load(fh)
                tail = "\n".join(err.strip().splitlines()[-15:])
                if timed_out:
                    r = {"estimator": e, "scenario": s, "error": f"timed out after {args.timeout:.0f} s"}
                elif r is None or (rc != 0 and "error" not in r):
                    why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
                    if rc == -9:
                        why += " (out of memory?)"
                    last = tail.splitlines()[-1] if tail else ""
                    r = {"estimator": e, "scenario": s, "error": why + (f": {last}" if last else "")}
                if "error" in r:
                    r["stderr_tail"] = tail
                    print(f"[compare] {e} / {s}: FAILED: {r['error']}", flush=True)
                else:
                    print(f"[compare] {e} / {s}: done in {wall:.0f} s; sigma_NMAD {r['sigma_nmad']:.4f}, "
                          f"outliers {r['outlier_rate']:.4f}, PIT KS {r['pit_ks']:.4f}, "
                          f"CDE {r['cdeloss']:.3f}", flush=True)
                r["subprocess_wall_s"] = wall
                results[f"{e}/{s}"] = r
                save()
    save()
    print(f"[compare] wrote {jpath} and {mpath}", flush=True)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
