#!/usr/bin/env python
"""PhotoVAEz benchmark on RAIL's DC2 test sample (and the SDSS MGS sample when it is there).

Every scenario runs with each decoder of ``--decoders`` (``ModelConfig.decoder``; default both):
``mlp``, a Gaussian MLP p(x|a,b,z) over the standardised features, and ``sed``, rest-frame SED
templates times a learned correction redshifted through the bands' filter curves (RAIL's filter
files, found by ``rail.photovaez.data.rail_resolver``).  Each (scenario, decoder) pair is trained
and estimated in its own subprocess, so that one failure cannot stop the others and the peak RSS
is per run.  Scenarios:

``full``
    all 10,225 DC2 training galaxies labelled.
``scarce``
    500 labelled (``np.random.default_rng(0).choice(10225, 500, replace=False)``), the other
    9,725 used as unlabelled photometry.
``biased``
    only ``mag_i_lsst < 21.5`` labelled, the rest unlabelled (a bright, incomplete spec-z set).
``speczlike``
    a spectroscopic-survey-like selection (:func:`speczlike_labels`): galaxy k of the training file
    is labelled when ``np.random.default_rng(1).random(10225)[k] < p_label(i_k, z_k)`` with ::

        p_label(i, z) = 0.9 * sigmoid((22.5 - i) / 0.4) * s(z),
        s(z) = 1 for z <= 1,  exp(-(z - 1) / 0.4) for z > 1,

    ``i = mag_i_lsst``, ``z`` the true redshift, ``sigmoid(x) = 1 / (1 + exp(-x))``: the targeting
    and success rate fall with magnitude (half of the ceiling at i = 22.5, a tail of faint labels
    past biased's hard cut) and redshifts fail beyond z ~ 1 (no strong lines in the optical window).
    This labels 1,193 of the 10,225 training galaxies (11.7%; expected 11.8%): median i 21.88
    (whole sample 24.38), 64% of them fainter than 21.5, the faintest i = 24.75; median z 0.61
    (whole sample 0.89), 10% at z > 1 and 6 (0.5%) at z > 1.5.  The rest are unlabelled.
``scarce-nounl``, ``biased-nounl``, ``speczlike-nounl``
    the semi-supervised ablation: the same labelled rows as ``scarce``, ``biased``,
    ``speczlike``, without the unlabelled ones (what the unlabelled photometry buys).  They run by
    default; ``benchmarks/compare.py`` leaves them out by default (RAIL's estimators are supervised).
``sdss``
    SDSS MGS (``../shared/data/sdss_mgs`` beside the checkout, or ``$PHOTOVAEZ_SDSS_DIR``): train on
    ``SDSS_MGS.train`` (5,000), estimate ``SDSS_MGS.test`` (5,000), ``sdss_mgs`` feature preset, grid 0..0.4.

The DC2 scenarios are estimated on all 20,449 validation galaxies on RAIL's default grid
(``linspace(0, 3, 301)``).  Metrics come from :func:`photovaez.metrics.evaluate` (RAIL/qp
definitions) with the PDF mode as point estimate; the median's point metrics are kept too.

Outputs: ``<out>/dc2.json`` (results keyed ``<scenario>/<decoder>``, e.g. ``biased/sed``),
``<out>/dc2.md`` (a table per decoder, then mlp against sed and what the unlabelled photometry
buys) and ``<out>/figures/<scenario>_<decoder>_{zphot_zspec,pit,vs_mag,vs_z,dz}.png``.  No model file
is written (unless ``--save-models``).  With ``--update`` the (scenario, decoder) runs made now
replace their earlier results in ``<out>/dc2.json`` and the others are kept (each result records
its own run date, ``run_date``).

Usage::

    python benchmarks/dc2.py                        # all scenarios, both decoders, the core's default epochs
    python benchmarks/dc2.py --epochs 3 --out /tmp/dc2_quick --scenarios full scarce --decoders sed
    python benchmarks/dc2.py --update --scenarios speczlike,biased --decoders mlp sed
    python benchmarks/dc2.py --update --decoders sed   # add the sed runs to the mlp ones already there
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from photovaez.config import DECODERS as _MODEL_DECODERS
from photovaez.config import EstimateConfig
from photovaez.metrics import POINT_METRICS, metric_rows

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
SDSS_DIR = os.environ.get("PHOTOVAEZ_SDSS_DIR", os.path.join(HERE, "..", "..", "shared", "data", "sdss_mgs"))
SDSS_COLUMNS = ["zs", "u", "g", "r", "i", "z", "u-g", "g-r", "r-i", "i-z",
                "eu", "eg", "er", "ei", "ez", "eu-g", "eg-r", "er-i", "ei-z"]
NOUNL = "-nounl"
SEMI_SUPERVISED = ("scarce", "biased", "speczlike")  # the scenarios with unlabelled galaxies
ABLATIONS = tuple(s + NOUNL for s in SEMI_SUPERVISED)
# every scenario, in the order of the tables
SCENARIOS = ["full", "scarce", "scarce" + NOUNL, "biased", "biased" + NOUNL, "speczlike", "speczlike" + NOUNL,
             "sdss"]
# the decoders of ModelConfig.decoder, in the order of the tables
DECODERS = list(_MODEL_DECODERS)
# every (scenario, decoder) result key of dc2.json, in the order of the file (decoder-major, as the tables)
RESULT_ORDER = [f"{s}/{d}" for d in DECODERS for s in SCENARIOS]
N_SCARCE = 500
BIASED_I_CUT = 21.5
# speczlike: p_label(i, z) = P0 * sigmoid((I_LIM - i) / W) * (1 if z <= Z0 else exp(-(z - Z0) / TAU))
SPECZLIKE = dict(p0=0.9, i_lim=22.5, width=0.4, z0=1.0, tau=0.4, seed=1)

# metric rows of the Markdown table: (key, label, format)
TABLE_ROWS = [
    ("n_labelled", "labelled galaxies", "{:d}"),
    ("n_unlabelled", "unlabelled galaxies", "{:d}"),
    ("n_estimated", "galaxies estimated", "{:d}"),
    ("run_date", "run date", None),
    ("epochs_max", "epochs (max)", "{:d}"),
    ("epochs_run", "epochs run (best)", None),
    ("skipped", "skipped gradient steps", None),
    ("inform_wall_s", "inform wall time [s]", "{:.1f}"),
    ("estimate_wall_s", "estimate wall time [s]", "{:.2f}"),
    ("peak_rss_mb", "peak RSS [MB]", "{:.0f}"),
    *metric_rows(("cdeloss", "pit_ks", "pit_cvm", "pit_ad", "pit_outlier_rate", *POINT_METRICS), "zmode"),
    ("sigma_nmad_zmedian", "sigma_NMAD (zmedian)", "{:.4f}"),
    ("outlier_rate_zmedian", "outlier rate (zmedian)", "{:.4f}"),
]
# the columns of the mlp-vs-sed table, each for both decoders (rows of TABLE_ROWS)
COMPARE_METRICS = ("sigma_nmad", "catastrophic_fraction", "pit_ks", "cdeloss")
# what the unlabelled photometry buys: these metrics of <s> against <s>-nounl (lower is better for both)
UNLABELLED_METRICS = ("sigma_nmad", "cdeloss")


# ------------------------------------------------------------------------------------------------
# data


def _sdss_tables() -> tuple[dict, dict]:
    def read(name):
        a = np.loadtxt(os.path.join(SDSS_DIR, name), comments="#", dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(SDSS_COLUMNS):
            raise ValueError(f"{name}: expected {len(SDSS_COLUMNS)} columns, got shape {a.shape}")
        return {c: a[:, j] for j, c in enumerate(SDSS_COLUMNS)}

    return read("SDSS_MGS.train"), read("SDSS_MGS.test")


def scenario_parser(doc: str, ablations: bool = True) -> argparse.ArgumentParser:
    """The argument parser of a scenario benchmark (described by the first paragraph of ``doc``)
    with its ``--scenarios`` option, which :func:`parse_scenarios` reads (``ablations``: whether
    the ``-nounl`` scenarios run by default)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=None,
                    help=f"scenarios to run, of {SCENARIOS} (default: {default_scenarios(ablations)}, sdss "
                         f"only when {SDSS_DIR} exists); comma-separated lists are accepted")
    return ap


def default_scenarios(ablations: bool = True) -> list[str]:
    """The scenarios run when ``--scenarios`` is not given: all of them, or all but the ``-nounl``
    ablations."""
    return [s for s in SCENARIOS if ablations or s not in ABLATIONS]


def parse_scenarios(ap: argparse.ArgumentParser, items: list[str] | None, ablations: bool = True) -> list[str]:
    """Scenario names from ``--scenarios`` (space- or comma-separated); default:
    :func:`default_scenarios`, ``sdss`` only when its data are there.  Unknown names are a parser error."""
    if items:
        scenarios = [s for item in items for s in item.split(",") if s]
    else:
        scenarios = [s for s in default_scenarios(ablations) if s != "sdss" or os.path.isdir(SDSS_DIR)]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenarios {bad}; choose from {SCENARIOS}")
    return scenarios


def parse_decoders(ap: argparse.ArgumentParser, items: list[str] | None) -> list[str]:
    """Decoder names from ``--decoders`` (space- or comma-separated, repeats dropped); default:
    all of :data:`DECODERS`.  Unknown names are a parser error."""
    decoders = list(dict.fromkeys(d for item in items for d in item.split(",") if d)) if items else list(DECODERS)
    bad = [d for d in decoders if d not in DECODERS]
    if bad or not decoders:
        ap.error(f"unknown decoders {bad}; choose from {DECODERS}")
    return decoders


def result_key(scenario: str, decoder: str) -> str:
    """The key of a (scenario, decoder) result in ``dc2.json``: ``"<scenario>/<decoder>"``."""
    return f"{scenario}/{decoder}"


def split_key(key: str) -> tuple[str, str]:
    """(scenario, decoder) of a :func:`result_key` (decoder ``""`` for a key without one)."""
    scenario, _, decoder = key.rpartition("/")
    return (scenario, decoder) if scenario else (key, "")


def speczlike_probability(mag_i, z, p0: float = SPECZLIKE["p0"], i_lim: float = SPECZLIKE["i_lim"],
                          width: float = SPECZLIKE["width"], z0: float = SPECZLIKE["z0"],
                          tau: float = SPECZLIKE["tau"]) -> np.ndarray:
    """p_label(i, z) = p0 * sigmoid((i_lim - i) / width) * s(z), s = 1 for z <= z0 and
    exp(-(z - z0) / tau) beyond (0 where i or z is not finite)."""
    mag_i, z = np.asarray(mag_i, np.float64), np.asarray(z, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        p = p0 / (1.0 + np.exp((mag_i - i_lim) / width)) * np.exp(-np.clip(z - z0, 0.0, None) / tau)
    return np.where(np.isfinite(p), p, 0.0)


def speczlike_labels(mag_i, z, seed: int = SPECZLIKE["seed"]) -> np.ndarray:
    """The ``speczlike`` labelled mask: galaxy k labelled when
    ``np.random.default_rng(seed).random(n)[k] < speczlike_probability(mag_i, z)[k]``."""
    p = speczlike_probability(mag_i, z)
    return np.random.default_rng(seed).random(p.shape) < p


def _subset(table: dict, idx: np.ndarray, drop: tuple[str, ...] = ()) -> dict:
    return {k: v[idx] for k, v in table.items() if k not in drop}


def scenario_data(name: str) -> dict:
    """Labelled / unlabelled training tables, the table to estimate, its truths, grid and spec."""
    from photovaez.features import preset
    from photovaez.grid import redshift_grid
    from rail.photovaez.data import read_dc2

    if name == "sdss":
        if not os.path.isdir(SDSS_DIR):
            raise FileNotFoundError(f"{SDSS_DIR} is not there")
        train, test = _sdss_tables()
        return dict(labelled=train, unlabelled=None, test=test, ztrue=test["zs"], redshift_col="zs",
                    spec=preset("sdss_mgs"), zgrid=redshift_grid(0.0, 0.4, 201), mag=test["r"], mag_name="r")
    if name.endswith(NOUNL):
        if name not in ABLATIONS:
            raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")
        return dict(scenario_data(name[:-len(NOUNL)]), unlabelled=None)
    train, valid = read_dc2("training"), read_dc2("validation")
    n = len(train["redshift"])
    if name == "full":
        lab = np.ones(n, bool)
    elif name == "scarce":
        lab = np.zeros(n, bool)
        lab[np.random.default_rng(0).choice(n, N_SCARCE, replace=False)] = True
    elif name == "biased":
        lab = train["mag_i_lsst"] < BIASED_I_CUT
    elif name == "speczlike":
        lab = speczlike_labels(train["mag_i_lsst"], train["redshift"])
    else:
        raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")
    labelled = _subset(train, np.flatnonzero(lab))
    unlabelled = _subset(train, np.flatnonzero(~lab), drop=("redshift",)) if (~lab).any() else None
    return dict(labelled=labelled, unlabelled=unlabelled, test=valid, ztrue=valid["redshift"],
                redshift_col="redshift", spec=preset("lsst"), zgrid=redshift_grid(0.0, 3.0, 301),
                mag=valid["mag_i_lsst"], mag_name="mag_i_lsst")


# ------------------------------------------------------------------------------------------------
# one scenario (runs in a subprocess)


def run_scenario(name: str, decoder: str, epochs: int | None, seed: int, n_b: int, fig_dir: str | None,
                 model_dir: str | None = None) -> dict:
    """Train scenario ``name`` with ``ModelConfig.decoder = decoder``, estimate its test set and
    return its result (metrics, wall times, peak RSS, figure paths), stored under
    ``result_key(name, decoder)``."""
    import torch

    from photovaez import api
    from photovaez.metrics import evaluate, point_metrics
    from photovaez.train import TrainConfig
    from rail.photovaez.data import rail_resolver
    from rail.photovaez.resources import peak_rss_mb

    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {DECODERS}")
    d = scenario_data(name)
    tc = TrainConfig(seed=seed, progress=False, device="auto")
    if epochs is not None:
        tc = TrainConfig.from_dict({**tc.to_dict(), "epochs": int(epochs)})
    n_lab = len(d["labelled"][d["redshift_col"]])
    n_unl = 0 if d["unlabelled"] is None else len(next(iter(d["unlabelled"].values())))

    t0 = time.perf_counter()
    model_dict = api.fit(d["labelled"], d["unlabelled"], spec=d["spec"], model_config={"decoder": decoder},
                         train_config=tc, redshift_col=d["redshift_col"], resolve=rail_resolver)
    inform_s = time.perf_counter() - t0
    rss_inform = peak_rss_mb()
    if model_dir:
        from photovaez.io import save_model

        save_model(model_dict, os.path.join(model_dir, f"model_{name}_{decoder}.pkl"))

    t0 = time.perf_counter()
    predictor = api.load_predictor(model_dict)
    pdfs, ancil = api.estimate(predictor, d["test"], d["zgrid"], n_samples=n_b, seed=seed)
    estimate_s = time.perf_counter() - t0
    rss = peak_rss_mb()

    ztrue = np.asarray(d["ztrue"], np.float64)
    res = evaluate(d["zgrid"], pdfs, ztrue, zpoint=ancil["zmode"])
    med = point_metrics(ancil["zmedian"], ztrue)
    rep = model_dict.get("report", {})
    out = {
        "scenario": name,
        "decoder": decoder,
        "n_labelled": int(n_lab),
        "n_unlabelled": int(n_unl),
        "n_estimated": int(len(ztrue)),
        "grid": [float(d["zgrid"][0]), float(d["zgrid"][-1]), int(len(d["zgrid"]))],
        "epochs_max": int(tc.epochs),
        "epochs_run": int(rep.get("epochs_run", -1)),
        "best_epoch": int(rep.get("best_epoch", -1)),
        "n_steps": int(rep.get("n_steps", -1)),
        "n_skipped": int(rep.get("n_skipped", -1)),
        "skipped_fraction": float(rep.get("skipped_fraction", float("nan"))),
        "alpha": float(rep.get("alpha", float("nan"))),
        "train_device": rep.get("device"),
        "inform_wall_s": inform_s,
        "estimate_wall_s": estimate_s,
        "peak_rss_inform_mb": rss_inform,
        "peak_rss_mb": rss,
        "n_pdf_flagged": int(np.sum(ancil["pdf_flag"] != 0)),
        "torch_threads": torch.get_num_threads(),
        **res,
        **{f"{k}_zmedian": v for k, v in med.items()},
    }
    if fig_dir:
        from photovaez import plots

        def fig(kind):
            return os.path.join(fig_dir, f"{name}_{decoder}_{kind}.png")

        title = f"PhotoVAEz, {name} ({decoder} decoder)"
        out["figures"] = [
            plots.plot_zphot_zspec(d["zgrid"], pdfs, ztrue, fig("zphot_zspec"), zpoint=ancil["zmode"], title=title),
            plots.plot_pit_hist(d["zgrid"], pdfs, ztrue, fig("pit"), title=title),
            plots.plot_metrics_vs_mag(d["zgrid"], pdfs, ztrue, np.asarray(d["mag"]), fig("vs_mag"),
                                      mag_label=d["mag_name"]),
            plots.plot_metrics_vs_z(d["zgrid"], pdfs, ztrue, fig("vs_z")),
            plots.plot_dz_vs_mag_and_z(ancil["zmode"], ztrue, np.asarray(d["mag"]), fig("dz"),
                                       mag_label=d["mag_name"], title=f"{title}: zmode"),
        ]
    return out


def _worker(args) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    res = run_scenario(args.worker, args.decoder, args.epochs, args.seed, args.n_b, args.fig_dir, args.save_models)
    with open(args.result, "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    return 0


# ------------------------------------------------------------------------------------------------
# driver


def merge_scenarios(old: dict, new: dict, order: list[str] | None = None, combine=None) -> dict:
    """Per-scenario results of an earlier run (``old``) updated with those of this run (``new``):
    a scenario in ``new`` replaces the old one (or, with ``combine``, becomes ``combine(old[s],
    new[s])``), the others are kept.  Ordered as ``order`` (default :data:`SCENARIOS`, the keys of
    ``benchmarks/compare.py``; this script's keys are ordered by :data:`RESULT_ORDER`), then any
    other names in the order first seen."""
    order = SCENARIOS if order is None else order
    names = [s for s in order if s in old or s in new]
    names += [s for s in dict.fromkeys([*old, *new]) if s not in names]
    out = {}
    for s in names:
        if s in new and s in old and combine is not None:
            out[s] = combine(old[s], new[s])
        else:
            out[s] = new[s] if s in new else old[s]
    return out


def load_results(path: str) -> dict:
    """An earlier ``dc2.json``: ``{"scenarios": {key: result}, "runs": [meta, ...]}`` (keys as
    :func:`result_key`); a result without its own ``run_date`` gets the date of the run that wrote
    the file."""
    with open(path) as fh:
        data = json.load(fh)
    date = data.get("meta", {}).get("date", "?")
    results = {n: {"run_date": date, **r} for n, r in data["scenarios"].items()}
    return {"scenarios": results, "runs": data.get("runs", [data.get("meta", {})])}


def _cell(row, fmt, r):
    from rail.photovaez.compare import format_cell

    if row == "run_date":
        return str(r.get("run_date", "?"))
    if "error" in r:
        return "failed" if row == "n_labelled" else ""
    if row == "epochs_run":
        return f"{r.get('epochs_run', '?')} ({r.get('best_epoch', '?')})"
    if row == "skipped":
        return f"{r.get('n_skipped', '?')} / {r.get('n_steps', '?')}"
    return format_cell(r.get(row), fmt)


def _run_text(m: dict) -> str:
    return (f"{m.get('date', '?')} ({m.get('host', '?')}, {m.get('device', '?')}; epochs = {m.get('epochs', '?')}, "
            f"seed = {m.get('seed', '?')}, n_b = {m.get('n_b', '?')} draws of b per PDF"
            + (f", decoders {', '.join(m['decoders'])}" if m.get("decoders") else "")
            + (f"; `{m['command']}`" if m.get("command") else "") + ")")


def group_by_decoder(results: dict) -> dict[str, dict[str, dict]]:
    """``{decoder: {scenario: result}}`` of results keyed by :func:`result_key`: the decoders in
    the order of :data:`DECODERS` (then any other in the order first seen), each decoder's
    scenarios in the order of ``results``."""
    groups: dict[str, dict[str, dict]] = {d: {} for d in DECODERS}
    for key, r in results.items():
        scenario, decoder = split_key(key)
        groups.setdefault(decoder, {})[scenario] = r
    return {d: g for d, g in groups.items() if g}


def _value(r: dict | None, key: str) -> float | None:
    """A finite metric of a successful result, else None."""
    v = None if r is None or "error" in r else r.get(key)
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def _metric_table(names: list[str], results: dict[str, dict]) -> list[str]:
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt in TABLE_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(key, fmt, results[n]) for n in names) + " |")
    return lines


def _ordered(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return [s for s in SCENARIOS if s in names] + [s for s in names if s not in SCENARIOS]


def comparison_lines(groups: dict[str, dict[str, dict]], pair: tuple[str, str] | None = None) -> list[str]:
    """The ``## mlp vs sed`` section: a table of :data:`COMPARE_METRICS` of both decoders for each
    scenario that both ran successfully, then, for each semi-supervised scenario and decoder with
    both ``<s>`` and ``<s>-nounl``, :data:`UNLABELLED_METRICS` of the two and their difference."""
    a, b = pair or tuple(DECODERS[:2])
    ga, gb = groups.get(a, {}), groups.get(b, {})
    rows = metric_rows(COMPARE_METRICS, "zmode")
    both = [s for s in _ordered([*ga, *gb]) if s in ga and s in gb and "error" not in ga[s] and "error" not in gb[s]]
    lines = [f"## {a} vs {b}", ""]
    if both:
        lines += ["The scenarios run with both decoders (point metrics of zmode; lower is better in every "
                  "column):", "",
                  "| scenario | " + " | ".join(f"{label}, {d}" for _, label, _ in rows for d in (a, b)) + " |",
                  "|---|" + "---:|" * (2 * len(rows))]
        for s in both:
            lines.append(f"| {s} | " + " | ".join(_cell(key, fmt, g[s]) for key, _, fmt in rows for g in (ga, gb))
                         + " |")
    else:
        lines.append(f"No scenario has results with both decoders ({a}, {b}) yet.")
    buys = []
    labels = {key: (label, fmt) for key, label, fmt in metric_rows(UNLABELLED_METRICS, "zmode")}
    for s in SEMI_SUPERVISED:
        for d, g in groups.items():
            with_unl, without = g.get(s), g.get(s + NOUNL)
            parts = []
            for key in UNLABELLED_METRICS:
                v1, v0 = _value(with_unl, key), _value(without, key)
                if v1 is not None and v0 is not None:
                    label, fmt = labels[key]
                    diff = fmt if fmt.startswith("{:+") else fmt.replace("{:", "{:+", 1)
                    parts.append(f"{label} {fmt.format(v1)} vs {fmt.format(v0)} ({diff.format(v1 - v0)})")
            if parts:
                buys.append(f"- `{s}` vs `{s}{NOUNL}`, {d}: " + "; ".join(parts))
    if buys:
        lines += ["", "What the unlabelled photometry buys: each semi-supervised scenario against the same labelled "
                  "rows without the unlabelled ones, with the same decoder (`<s>` vs `<s>-nounl`, the difference "
                  "of the unrounded values in brackets; negative is better):", "", *buys]
    return lines


def write_markdown(path: str, meta: dict, results: dict, runs: list[dict] | None = None) -> None:
    """``dc2.md`` of results keyed by :func:`result_key`: the setting, one metric table per decoder,
    the decoders compared (:func:`comparison_lines`), failed runs, the figures by decoder."""
    groups = group_by_decoder(results)
    runs = runs or [meta]
    c = SPECZLIKE
    lines = [
        "# PhotoVAEz benchmark: DC2 (RAIL test sample) and SDSS MGS",
        "",
        "Generated by `benchmarks/dc2.py` on " + "; updated on ".join(_run_text(m) for m in runs)
        + ". Each result's run date is its table's `run date` row.",
        "",
        "DC2: trained on `test_dc2_training_9816.hdf5` (10,225), estimated on all of "
        "`test_dc2_validation_9816.hdf5` (20,449), grid linspace(0, 3, 301). "
        "`scarce`: 500 random labels; `biased`: labels only for mag_i_lsst < 21.5; `speczlike`: galaxy k "
        f"labelled when `np.random.default_rng({c['seed']}).random(10225)[k] < p_label(i_k, z_k)`, "
        f"p_label(i, z) = {c['p0']} sigmoid(({c['i_lim']} - i) / {c['width']}) s(z), s(z) = 1 for "
        f"z <= {c['z0']}, exp(-(z - {c['z0']}) / {c['tau']}) beyond (i = mag_i_lsst, z the true redshift); "
        "the other training galaxies are unlabelled. `<scenario>-nounl`: the same labelled rows without the "
        "unlabelled ones (the semi-supervised ablation). "
        "`sdss`: SDSS MGS train/test (5,000 each), grid linspace(0, 0.4, 201).",
        "",
        "Decoders (`ModelConfig.decoder`, the generative model of the photometry p(x|a,b,z)): `mlp`, a Gaussian "
        "MLP over the standardised features; `sed`, rest-frame SED templates times a learned correction, "
        "redshifted through the bands' filter curves (RAIL's filter files), with a flux-space likelihood using "
        "the catalogue's errors. The rest of `ModelConfig` is its default (`redshift_prior = auto`: lognormal "
        "with mlp, BPZ with sed). Every scenario runs with each decoder in its own process, with the same data, "
        "seed and training settings; one table per decoder below, then the two compared.",
        "",
        "Metrics: `photovaez.metrics.evaluate` (qp/RAIL definitions; CDE loss on the PDFs' grid as RAIL's "
        "OldEvaluator; PIT statistics by `qp.metrics.pit.PIT`). ez = (z_phot - z_spec)/(1 + z_spec); "
        "outlier rate: \\|ez\\| > max(0.06, 3 sigma_IQR). Wall times are on the machine named above, "
        "peak RSS is per (scenario, decoder) process.",
        "",
        "Reference (RAIL KNN on the same DC2 split, from the project's RAIL notes §4.5): CDE loss -6.095 "
        "(OldEvaluator grid), PIT KS 0.071, PIT outlier rate 0.027, sigma_IQR 0.0252, outlier rate 0.095, "
        "sigma_MAD 0.0251.",
    ]
    for d, g in groups.items():
        lines += ["", f"## decoder = {d}", "", *_metric_table(list(g), g)]
    lines += ["", *comparison_lines(groups)]
    errs = {k: r["error"] for k, r in results.items() if "error" in r}
    if errs:
        lines += ["", "## Failed runs", ""] + [f"- `{k}`: {e}" for k, e in errs.items()]
    folder = os.path.dirname(os.path.abspath(path))
    figs = {d: [(s, r["figures"]) for s, r in g.items() if r.get("figures")] for d, g in groups.items()}
    if any(figs.values()):
        lines += ["", "## Figures"]
        for d, items in figs.items():
            if items:
                lines += ["", f"### decoder = {d}", ""]
                lines += [f"- {s}: " + ", ".join(f"[{os.path.basename(f)}]({os.path.relpath(f, folder)})" for f in fs)
                          for s, fs in items]
    lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script: :func:`scenario_parser`'s ``--scenarios``, ``--decoders``
    (read by :func:`parse_decoders`) and the run options."""
    ap = scenario_parser(__doc__)
    ap.add_argument("--decoders", nargs="+", default=None,
                    help=f"decoders (ModelConfig.decoder) to run every scenario with, of {DECODERS} (default: all); "
                         "comma-separated lists are accepted")
    ap.add_argument("--epochs", type=int, default=None,
                    help="maximum training epochs (default: photovaez.train.TrainConfig().epochs)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder for dc2.json, dc2.md, figures/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-b", dest="n_b", type=int, default=EstimateConfig().n_b_samples,
                    help="draws of b per amortised PDF")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--jobs", type=int, default=1,
                    help="(scenario, decoder) runs at once (each its own process; wall times then share the CPU)")
    ap.add_argument("--save-models", default=None,
                    help="folder (outside the repository) to keep each run's model file in "
                         "(model_<scenario>_<decoder>.pkl)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per (scenario, decoder) subprocess")
    ap.add_argument("--update", action="store_true",
                    help="merge into the results already in --out: the (scenario, decoder) runs made now replace "
                         "theirs, the others are kept")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--decoder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--fig-dir", dest="fig_dir", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    if args.worker:
        if args.decoder not in DECODERS:
            ap.error(f"--worker needs --decoder, one of {DECODERS}")
        return _worker(args)
    if args.decoder is not None:
        ap.error("--decoder is the worker's; choose the decoders to run with --decoders")

    from photovaez.train import TrainConfig

    scenarios = parse_scenarios(ap, args.scenarios)
    decoders = parse_decoders(ap, args.decoders)
    out = os.path.abspath(args.out)
    fig_dir = None if args.no_figures else os.path.join(out, "figures")
    os.makedirs(out, exist_ok=True)

    import torch

    epochs = args.epochs if args.epochs is not None else TrainConfig().epochs
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node() or "unknown host",
        "device": "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                  f"CPU ({os.cpu_count()} cores)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "epochs": epochs,
        "epochs_is_default": args.epochs is None,
        "decoders": decoders,
        "seed": args.seed,
        "n_b": args.n_b,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    try:
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
    except Exception:
        pass

    from rail.photovaez.compare import run_worker

    logging.basicConfig(level=logging.INFO, format="[dc2] %(message)s")

    def one(pair: tuple[str, str]) -> tuple[str, dict]:
        name, decoder = pair
        key = result_key(name, decoder)
        with tempfile.TemporaryDirectory() as tmp:
            rfile = os.path.join(tmp, "result.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--decoder", decoder,
                   "--result", rfile, "--seed", str(args.seed), "--n-b", str(args.n_b),
                   "--threads", str(args.threads), "--epochs", str(epochs)]
            if fig_dir:
                cmd += ["--fig-dir", fig_dir]
            if args.save_models:
                cmd += ["--save-models", os.path.abspath(args.save_models)]
            r, wall = run_worker(cmd, rfile, args.timeout, name=key,
                                 identity={"scenario": name, "decoder": decoder})
            if r.get("stderr_tail"):
                logging.info("%s", r["stderr_tail"])
            r["subprocess_wall_s"] = wall
            r["run_date"] = meta["date"]
            return key, r

    from concurrent.futures import ThreadPoolExecutor

    meta["jobs"] = args.jobs
    pairs = [(s, d) for d in decoders for s in scenarios]  # decoder-major, as RESULT_ORDER
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(pool.map(one, pairs))
    keys = list(results)

    jpath, mpath = os.path.join(out, "dc2.json"), os.path.join(out, "dc2.md")
    runs = [meta]
    if args.update and os.path.exists(jpath):
        old = load_results(jpath)
        runs = old["runs"] + [meta]
        results = merge_scenarios(old["scenarios"], results, order=RESULT_ORDER)
    with open(jpath, "w") as fh:
        json.dump({"meta": meta, "runs": runs, "scenarios": results}, fh, indent=1, default=float)
    write_markdown(mpath, meta, results, runs)
    logging.info("wrote %s and %s", jpath, mpath)
    return 0 if all("error" not in results[k] for k in keys) else 1


if __name__ == "__main__":
    sys.exit(main())
