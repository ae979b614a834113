"""PhotoVAEz side by side with RAIL's own estimators on the same data.

:func:`compare` informs and estimates every estimator through its RAIL stages, each in its own
subprocess under a time limit, so that one failure, crash or memory blow-up cannot stop the
others and the peak RSS is per estimator.  Supervised estimators are informed on the labelled
rows only; PhotoVAEz (:data:`SEMI_SUPERVISED`) also gets the unlabelled rows.  Every estimator's
``qp.Ensemble`` is scored the same way: ``ens.pdf(grid)`` on ``linspace(zmin, zmax, nzbins)``,
then :func:`photovaez.metrics.evaluate`, with the ensemble's ``zmode`` ancil as point estimate
when it has one (else the mode on the grid).

Used by ``photovaez compare`` (any tables) and ``benchmarks/compare.py`` (the DC2 and SDSS
scenarios), both through :func:`compare_to_files`; the other benchmarks run their workers with
:func:`run_subprocess`.  The other estimators come with ``pip install "pz-rail-photovaez[compare]"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from photovaez.metrics import metric_rows

__all__ = [
    "ESTIMATORS", "SEMI_SUPERVISED", "TABLE_COLS", "compare", "compare_to_files", "format_cell", "installed_estimators",
    "labelled_and_unlabelled", "markdown_table", "run_order", "run_subprocess", "run_worker", "shared_options",
]

log = logging.getLogger(__name__)


class Estimator(NamedTuple):
    """Where a RAIL estimator lives: PyPI distribution, module under ``rail.estimation.algos``,
    informer and estimator class names."""

    dist: str
    module: str
    informer: str
    estimator: str


ESTIMATORS: dict[str, Estimator] = {
    "trainZ": Estimator("pz-rail-base", "train_z", "TrainZInformer", "TrainZEstimator"),
    "KNearNeigh": Estimator("pz-rail-sklearn", "k_nearneigh", "KNearNeighInformer", "KNearNeighEstimator"),
    "FlexZBoost": Estimator("pz-rail-flexzboost", "flexzboost", "FlexZBoostInformer", "FlexZBoostEstimator"),
    "GPz": Estimator("pz-rail-gpz-v1", "gpz", "GPzInformer", "GPzEstimator"),
    "DNF": Estimator("pz-rail-dnf", "dnf", "DNFInformer", "DNFEstimator"),
    "CMNN": Estimator("pz-rail-cmnn", "cmnn", "CMNNInformer", "CMNNEstimator"),
    "TPZlite": Estimator("pz-rail-tpz", "tpz_lite", "TPZliteInformer", "TPZliteEstimator"),
    "BPZlite": Estimator("pz-rail-bpz", "bpz_lite", "BPZliteInformer", "BPZliteEstimator"),
    "PhotoVAEz": Estimator("pz-rail-photovaez", "photovaez", "PhotoVAEzInformer", "PhotoVAEzEstimator"),
    "PZFlow": Estimator("pz-rail-pzflow", "pzflow_nf", "PZFlowInformer", "PZFlowEstimator"),
}
SEMI_SUPERVISED = frozenset({"PhotoVAEz"})
RUN_LAST = ("PZFlow",)  # the slowest and largest: run after the others

# columns of the Markdown table: (result key, label, format)
TABLE_COLS = metric_rows(("sigma_nmad", "cdeloss", "pit_ks", "outlier_rate")) + [
    ("inform_wall_s", "inform [s]", "{:.1f}"), ("estimate_wall_s", "estimate [s]", "{:.1f}"),
    ("peak_rss_mb", "peak RSS [MB]", "{:.0f}")]


def _module(name: str) -> str:
    return "rail.estimation.algos." + ESTIMATORS[name].module


def importable(name: str) -> bool:
    """Whether the estimator's RAIL module can be found (without importing it)."""
    if name not in ESTIMATORS:
        return False
    try:
        return importlib.util.find_spec(_module(name)) is not None
    except (ImportError, ValueError):
        return False


def run_order(names: Sequence[str]) -> list[str]:
    """``names`` with the slowest and largest (:data:`RUN_LAST`) moved to the end."""
    return [e for e in names if e not in RUN_LAST] + [e for e in names if e in RUN_LAST]


def installed_estimators() -> list[str]:
    """The estimators of :data:`ESTIMATORS` whose RAIL package is installed."""
    return [e for e in ESTIMATORS if importable(e)]


def shared_options(*, redshift_col: str = "redshift", zmin: float = 0.0, zmax: float = 3.0, nzbins: int = 301,
                   bands: Sequence[str] | None = None, err_bands: Sequence[str] | None = None,
                   ref_band: str | None = None, mag_limits: Mapping[str, float] | None = None,
                   filter_list: Sequence[str] | None = None) -> dict[str, Any]:
    """The column and grid options every estimator gets (each stage keeps the keys it knows).

    ``bands`` and ``err_bands`` are also translated to the option names that some estimators use
    instead of RAIL's shared ones (``err_dict``, PZFlow's ``column_names`` / ``err_names_dict``,
    BPZ's ``zp_errors`` / ``replace_error_vals``); ``filter_list`` names BPZ's filter curves.
    """
    if nzbins < 2 or not zmax > zmin:
        raise ValueError(f"need zmax > zmin and nzbins >= 2; got zmin={zmin}, zmax={zmax}, nzbins={nzbins}")
    opts: dict[str, Any] = dict(hdf5_groupname="", redshift_col=redshift_col, zmin=float(zmin), zmax=float(zmax),
                                nzbins=int(nzbins), dz=float((zmax - zmin) / (nzbins - 1)))
    if bands is not None:
        bands = list(bands)
        if err_bands is None or len(err_bands) != len(bands):
            raise ValueError(f"err_bands must name one error column per band {bands}; got {err_bands}")
        errs = list(err_bands)
        opts.update(bands=bands, err_bands=errs, err_dict={**dict(zip(bands, errs)), redshift_col: None},
                    column_names=bands, err_names_dict={e: f"{b}_err" for b, e in zip(bands, errs)},
                    zp_errors=[0.01] * len(bands), replace_error_vals=[0.1] * len(bands))
    if ref_band is not None:
        opts["ref_band"] = ref_band
    if mag_limits is not None:
        opts["mag_limits"] = {str(k): float(v) for k, v in mag_limits.items()}
    if filter_list is not None:
        opts["filter_list"] = list(filter_list)
    return opts


def labelled_and_unlabelled(table: Mapping[str, np.ndarray], redshift_col: str,
                            extra_unlabelled: Mapping[str, np.ndarray] | None = None) -> tuple[dict, dict | None]:
    """The rows of a training table with a finite, positive ``redshift_col`` (labelled), and the
    others without that column (unlabelled, or None when there are none).

    ``extra_unlabelled`` (photometry without redshifts, e.g. a second file) is appended to the
    unlabelled rows, on the columns both have; its ``redshift_col``, if any, is dropped.
    """
    if redshift_col not in table:
        raise KeyError(f"redshift column {redshift_col!r} is not in the training table; its columns are "
                       f"{list(table)}")
    z = np.asarray(table[redshift_col], dtype=np.float64)
    lab = np.isfinite(z) & (z > 0)
    if not lab.any():
        raise ValueError(f"no labelled rows: column {redshift_col!r} has no finite redshift > 0")
    labelled = {k: np.asarray(v)[lab] for k, v in table.items()}
    unlabelled = None if lab.all() else {k: np.asarray(v)[~lab] for k, v in table.items() if k != redshift_col}
    if extra_unlabelled is not None:
        extra = {k: v for k, v in extra_unlabelled.items() if k != redshift_col}
        if unlabelled is not None:
            extra = {k: np.concatenate([np.asarray(unlabelled[k]), np.asarray(extra[k])])
                     for k in unlabelled if k in extra}
        unlabelled = extra
    return labelled, unlabelled


def stage_config(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a stage class knows (RAIL accepts unknown keys silently, so filter them)."""
    return {k: v for k, v in options.items() if k in cls.config_options}


# ------------------------------------------------------------------------------------------------
# tables on disk for the workers (flat hdf5, one dataset per column)


def _write_table(path: str, table: Mapping[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in table.items():
            f.create_dataset(k, data=np.asarray(v))


def _read_table(path: str) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}


def _peak_rss_mb() -> float:
    """Peak RSS of this worker (its own address space) or of any child it waited for."""
    from .resources import peak_rss_mb

    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2**20)
    return max(peak_rss_mb(), kids)


# ------------------------------------------------------------------------------------------------
# one estimator (runs in a worker subprocess)


def run_estimator(name: str, job: Mapping[str, Any]) -> dict[str, Any]:
    """Inform and estimate one estimator in this process and score its ensemble.

    ``job`` holds the table paths (``labelled``, ``unlabelled`` or None, ``test``), the
    ``redshift_col`` of the test table's true redshifts, the ``options`` every stage gets and the
    ``stage_options`` of this estimator (which override them).
    """
    from photovaez.grid import point_estimates, redshift_grid
    from photovaez.metrics import evaluate

    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(ESTIMATORS)}")
    info = ESTIMATORS[name]
    try:
        module = importlib.import_module(_module(name))
    except ImportError as exc:
        raise ImportError(f"{info.dist} not importable ({exc}); pip install {info.dist}") from None
    inf_cls, est_cls = getattr(module, info.informer), getattr(module, info.estimator)

    labelled, test = _read_table(job["labelled"]), _read_table(job["test"])
    semi = name in SEMI_SUPERVISED and job.get("unlabelled")
    unlabelled = _read_table(job["unlabelled"]) if semi else None
    opts = {**job["options"], **job.get("stage_options", {})}
    zcol = job["redshift_col"]
    zgrid = redshift_grid(opts["zmin"], opts["zmax"], opts["nzbins"])
    ztrue = np.asarray(test[zcol], dtype=np.float64).reshape(-1)
    # the truth column stays (some stages, e.g. PZFlow's, select it) but holds NaN: no estimator sees it
    test_in = {**test, zcol: np.full(len(ztrue), np.nan)}

    work = tempfile.mkdtemp(prefix=f"compare_{name}_")
    cwd = os.getcwd()
    os.chdir(work)  # stages write their model and output files into the working folder
    try:
        inform = inf_cls.make_stage(name=f"inform_{name.lower()}", model=os.path.join(work, "model.pkl"),
                                    **stage_config(inf_cls, opts))
        t0 = time.perf_counter()
        model = inform.inform(labelled, unlabelled) if semi else inform.inform(labelled)
        inform_s = time.perf_counter() - t0
        rss_inform = _peak_rss_mb()

        est = est_cls.make_stage(name=f"estimate_{name.lower()}", model=model, **stage_config(est_cls, opts))
        t0 = time.perf_counter()
        ens = est.estimate(test_in).data
        estimate_s = time.perf_counter() - t0
        rss = _peak_rss_mb()
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)

    pdfs = np.asarray(ens.pdf(zgrid), dtype=np.float64).reshape(len(ztrue), len(zgrid))
    pdfs = np.where(np.isfinite(pdfs), np.clip(pdfs, 0.0, None), 0.0)
    anc = ens.ancil or {}
    if "zmode" in anc:
        zmode, zmode_source = np.asarray(anc["zmode"], np.float64).reshape(-1), "ancil"
    else:
        zmode, zmode_source = point_estimates(zgrid, pdfs)["zmode"], "grid"
    empty = pdfs.sum(axis=1) <= 0
    if empty.any():  # zero on the whole grid: scored as flat (counted in n_empty_pdfs)
        pdfs[empty] = 1.0
    return {
        "estimator": name,
        "package": info.dist,
        "parameterization": type(ens.gen_obj).__name__ if hasattr(ens, "gen_obj") else str(ens.gen_func),
        "zmode_source": zmode_source,
        "n_empty_pdfs": int(empty.sum()),
        "n_labelled": int(len(labelled[zcol])),
        "n_unlabelled": 0 if unlabelled is None else int(len(next(iter(unlabelled.values())))),
        "n_estimated": int(len(ztrue)),
        "grid": [float(zgrid[0]), float(zgrid[-1]), int(len(zgrid))],
        "options": {k: v for k, v in stage_config(inf_cls, opts).items() if k not in job["options"]},
        "inform_wall_s": inform_s,
        "estimate_wall_s": estimate_s,
        "peak_rss_inform_mb": rss_inform,
        "peak_rss_mb": rss,
        **evaluate(zgrid, pdfs, ztrue, zpoint=zmode),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _worker(job_path: str, result_path: str) -> int:
    with open(job_path) as fh:
        job = json.load(fh)
    try:
        res, rc = run_estimator(job["estimator"], job), 0
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        res = {"estimator": job["estimator"], "error": msg[:300], "traceback": traceback.format_exc()[-4000:]}
        rc = 1
    with open(result_path, "w") as fh:
        json.dump(res, fh, indent=1, default=_json_default)
    return rc


# ------------------------------------------------------------------------------------------------
# driver


def run_subprocess(cmd: list[str], timeout: float | None, cwd: str | None = None) -> tuple[int, str, bool]:
    """Run ``cmd`` (its stdout discarded) in a new session, at most ``timeout`` seconds (None: no
    limit); on timeout kill its whole process group (estimators may fork).

    Returns (return code, stderr, whether it timed out).
    """
    with tempfile.TemporaryFile(mode="w+") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True, cwd=cwd)
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


def run_worker(cmd: list[str], result_path: str, timeout: float | None, *, name: str,
               identity: Mapping[str, Any] | None = None, cwd: str | None = None) -> tuple[dict[str, Any], float]:
    """Run a worker process that writes its result, a JSON object, to ``result_path``.

    The worker runs under :func:`run_subprocess` (its process group killed after ``timeout``
    seconds).  Returns (result, wall seconds): the worker's result, or ``{**identity, "error":
    why}`` if it timed out, died or wrote none; a failed result gets the tail of the worker's
    stderr as ``stderr_tail``.  Start, failure and the metrics of a result are logged under
    ``name``.
    """
    if os.path.exists(result_path):
        os.remove(result_path)
    log.info("%s: starting", name)
    t0 = time.perf_counter()
    rc, err, timed_out = run_subprocess(cmd, timeout, cwd=cwd)
    wall = time.perf_counter() - t0
    r = None
    if os.path.exists(result_path):
        with open(result_path) as fh:
            r = json.load(fh)
    tail = "\n".join(err.strip().splitlines()[-15:])
    if timed_out:
        r = {**(identity or {}), "error": f"timed out after {timeout:.0f} s"}
    elif r is None or (rc != 0 and "error" not in r):
        why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        if rc == -9:
            why += " (out of memory?)"
        last = tail.splitlines()[-1] if tail else ""
        r = {**(identity or {}), "error": why + (f": {last}" if last else "")}
    if "error" in r:
        r["stderr_tail"] = tail
        log.warning("%s: FAILED: %s", name, r["error"])
    elif "sigma_nmad" in r:
        log.info("%s: done in %.0f s; sigma_NMAD %.4f, outliers %.4f, PIT KS %.4f, CDE %.3f", name, wall,
                 r["sigma_nmad"], r["outlier_rate"], r["pit_ks"], r["cdeloss"])
    else:
        log.info("%s: done in %.0f s", name, wall)
    return r, wall


def compare(labelled: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], *,
            unlabelled: Mapping[str, np.ndarray] | None = None, options: Mapping[str, Any] | None = None,
            estimators: Sequence[str] | None = None, stage_options: Mapping[str, Mapping[str, Any]] | None = None,
            timeout: float = 1200.0, on_result: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Inform every estimator on the same data, estimate ``test`` and score it against its truths.

    Parameters
    ----------
    labelled
        Training table with the true redshifts (column ``options["redshift_col"]``).
    test
        Table to estimate; it must hold the true redshifts in the same column (the estimators see
        that column filled with NaN).
    unlabelled
        Photometry without redshifts, given to the semi-supervised estimators only.
    options
        What every stage gets (:func:`shared_options`; default: RAIL's DC2 columns and grid).
    estimators
        Names from :data:`ESTIMATORS` (default: every installed one); an unknown or missing one
        is reported as failed, not raised.
    stage_options
        Per estimator, options that override ``options`` (e.g. ``{"PhotoVAEz": {"epochs": 50}}``).
    timeout
        Seconds per estimator (inform + estimate); the process group is killed after it.
    on_result
        Called with ``(name, result)`` after each estimator (to save partial results).

    Returns
    -------
    dict
        Estimator name -> result: the metrics of :func:`photovaez.metrics.evaluate`, wall times,
        peak RSS, or ``{"error": ...}`` with the tail of its stderr.
    """
    options = dict(options) if options is not None else shared_options()
    zcol = options.get("redshift_col", "redshift")
    options.setdefault("redshift_col", zcol)
    for what, table in (("labelled", labelled), ("test", test)):
        if zcol not in table:
            raise KeyError(f"redshift column {zcol!r} is not in the {what} table; its columns are {list(table)}")
    names = list(estimators) if estimators is not None else installed_estimators()
    order = run_order(names)
    stage_options = stage_options or {}

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="photovaez_compare_") as tmp:
        paths = {"labelled": os.path.join(tmp, "labelled.hdf5"), "test": os.path.join(tmp, "test.hdf5"),
                 "unlabelled": os.path.join(tmp, "unlabelled.hdf5") if unlabelled is not None else None}
        _write_table(paths["labelled"], labelled)
        _write_table(paths["test"], test)
        if unlabelled is not None:
            _write_table(paths["unlabelled"], unlabelled)
        for name in order:
            job = {**paths, "estimator": name, "redshift_col": zcol, "options": options,
                   "stage_options": dict(stage_options.get(name, {}))}
            jpath, rpath = os.path.join(tmp, f"job_{name}.json"), os.path.join(tmp, f"result_{name}.json")
            with open(jpath, "w") as fh:
                json.dump(job, fh, default=_json_default)
            r, wall = run_worker([sys.executable, "-m", __name__, jpath, rpath], rpath, timeout, name=name,
                                 identity={"estimator": name})
            r["subprocess_wall_s"] = wall
            results[name] = r
            if on_result is not None:
                on_result(name, r)
    return results


def format_cell(value: Any, fmt: str) -> str:
    """A table cell: ``value`` formatted with ``fmt``, as text if it does not fit, "" if None."""
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], estimators: Sequence[str],
                   columns: Sequence[tuple[str, str, str]] = TABLE_COLS) -> str:
    """A Markdown table: one row per estimator, ``columns`` for each data set.

    ``results`` maps a data-set label (``""`` for a single one) to :func:`compare`'s result.
    """
    head = ["estimator"]
    for label in results:
        head += [f"{label}: {c}" if label else c for _, c, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for e in estimators:
        cells = [e]
        for res in results.values():
            r = res.get(e)
            if r is not None and "error" in r:
                msg = str(r["error"]).replace("|", "\\|").replace("\n", " ")
                cells += ["failed: " + msg] + [""] * (len(columns) - 1)
            else:
                cells += ["not run" if r is None else format_cell(r.get(k), f) for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_to_files(out: str, datasets: Iterable[tuple[str, Mapping[str, Any]]], *, estimators: Sequence[str],
                     timeout: float, document: Callable[[dict], dict], markdown: Callable[[dict], str],
                     results: dict[str, dict[str, dict]] | None = None) -> tuple[dict[str, dict[str, dict]], str, str]:
    """:func:`compare` on each data set, ``out/compare.json`` and ``out/compare.md`` rewritten after
    every estimator (so that partial results survive an interrupted run).

    Parameters
    ----------
    out
        Folder for the two files (made if need be).
    datasets
        ``(label, data)`` pairs, read one at a time (a generator can load each when its turn
        comes); ``data`` holds ``labelled``, ``test``, ``unlabelled`` (or None), ``options`` and
        ``stage_options``, the arguments of :func:`compare`.
    estimators, timeout
        As for :func:`compare`.
    document
        Label -> estimator -> result to the JSON document to write.
    markdown
        The same to the text of ``compare.md``.
    results
        Results to start from (e.g. of an earlier run); a new result replaces the old one of the
        same data set and estimator.

    Returns
    -------
    tuple
        (label -> estimator -> result, path of compare.json, path of compare.md)
    """
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    jpath, mpath = os.path.join(out, "compare.json"), os.path.join(out, "compare.md")
    results = {} if results is None else results

    def save() -> None:
        with open(jpath, "w") as fh:
            json.dump(document(results), fh, indent=1, default=_json_default)
        with open(mpath, "w") as fh:
            fh.write(markdown(results))

    for label, d in datasets:
        done = results.setdefault(label, {})

        def on_result(name: str, r: dict, done: dict = done) -> None:
            done[name] = r
            save()

        compare(d["labelled"], d["test"], unlabelled=d.get("unlabelled"), options=d["options"],
                estimators=estimators, stage_options=d.get("stage_options"), timeout=timeout, on_result=on_result)
    save()
    return results, jpath, mpath


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m {__name__} JOB.json RESULT.json (a worker of compare())")
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
