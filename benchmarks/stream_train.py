#!/usr/bin/env python
"""Training from files larger than memory: peak memory and time per epoch of streamed training.

The labelled file is RAIL's DC2 training sample (``test_dc2_training_9816.hdf5``, 10,225 galaxies,
group ``photometry``).  An unlabelled file of N rows is synthesised from it: rows drawn with
replacement, every detected magnitude redrawn from its error, ``m' = m + min(sigma, 2) * eps``
(errors kept; the 2-mag clip is the training's own ``max_mag_err``), written block by block to an
hdf5 file (group ``photometry``, no redshift) in ``--work`` (a temporary folder outside the
repository by default).  Each N is trained in a fresh subprocess with
:func:`photovaez.api.fit_streaming` (the default model, the sed decoder; ``--epochs`` epochs, 1 by
default; the amortised calibration on the held-out labels; no proposal fit and no posterior
calibration unless ``--post-training``), which reads both files chunk by chunk
(``stream_chunk_size``).  Reported per run: the child's peak RSS as the parent sees it
(``os.wait4``'s ``ru_maxrss``) and as the child measures it (``VmHWM``), the wall time of the
whole fit, of the scan (scaler, counts, validation rows, samples) and of each epoch.  Memory bounded
by the chunk size, not by N, shows as the same peak RSS at 10^5 and 10^6 rows (target: at most
1.25 x).  ``--max-steps`` stops each epoch after that many steps (the time per epoch is then
extrapolated from the steps run, and the output says so).

Outputs: ``<out>/stream_train.json`` and ``<out>/stream_train.md``.

Usage::

    python benchmarks/stream_train.py                       # 10^5 and 10^6 unlabelled rows
    python benchmarks/stream_train.py --rows 20000 --max-steps 50 --out /tmp/st
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BANDS = [f"mag_{b}_lsst" for b in "ugrizy"]
ERRS = [f"mag_err_{b}_lsst" for b in "ugrizy"]
MAX_DRAW_ERR = 2.0

log = logging.getLogger("stream_train")


def synthesise(path: str, n_rows: int, seed: int = 0, block: int = 200_000, source: dict | None = None) -> None:
    """Write ``n_rows`` resampled galaxies of ``source`` (default: the DC2 training table) without
    redshift to ``path``, block by block."""
    import h5py

    if source is None:
        from rail.photovaez.data import read_dc2

        source = read_dc2("training")
    src = source
    src = {c: np.asarray(src[c], np.float32) for c in BANDS + ERRS}
    n_src = len(src[BANDS[0]])
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        g = f.create_group("photometry")
        dsets = {c: g.create_dataset(c, shape=(n_rows,), dtype="f4") for c in BANDS + ERRS}
        for s in range(0, n_rows, block):
            e = min(s + block, n_rows)
            idx = rng.integers(0, n_src, e - s)
            for b, err in zip(BANDS, ERRS):
                m, sig = src[b][idx], src[err][idx]
                detected = np.isfinite(m) & (np.abs(m) < 90)
                # the draw's width is clipped at 2 mag (FeatureSpec.max_mag_err, what training resamples
                # with): DC2's u errors reach 86 mag, and m - 86 eps magnitudes overflow the sed decoder
                width = np.minimum(sig, MAX_DRAW_ERR)
                dsets[b][s:e] = np.where(detected, m + width * rng.standard_normal(e - s).astype(np.float32), m)
                dsets[err][s:e] = sig


def _child(args) -> int:
    """One streamed fit; writes its numbers to ``--result`` (JSON)."""
    import torch

    import photovaez.train as tr
    from photovaez import streaming
    from photovaez.api import fit_streaming
    from rail.photovaez.data import dc2_path, rail_resolver
    from rail.photovaez.resources import peak_rss_mb

    torch.set_num_threads(args.threads)
    rss0 = peak_rss_mb()
    epochs: list[dict] = []
    real_epoch, real_parts = tr.train_epoch, streaming.TrainingStream.epoch_parts
    counted = {"steps": 0, "per_epoch": 0}

    def timed_epoch(state, data, *a, **k):
        counted["steps"] = 0
        t = time.perf_counter()
        loss = real_epoch(state, data, *a, **k)
        epochs.append({"wall_s": time.perf_counter() - t, "steps": counted["steps"], "train_loss": loss,
                       "vmhwm_mb": peak_rss_mb()})
        return loss

    def parts(self, epoch, batch_size, *a, **k):
        counted["per_epoch"] = self.steps_per_epoch(batch_size)
        for i, p in enumerate(real_parts(self, epoch, batch_size, *a, **k)):
            if args.max_steps and i >= args.max_steps:
                return
            counted["steps"] += 1
            yield p

    tr.train_epoch, streaming.TrainingStream.epoch_parts = timed_epoch, parts
    real_open = streaming.TrainingStream.open
    scan = {}

    def timed_open(*a, **k):
        t = time.perf_counter()
        s = real_open(*a, **k)
        scan["wall_s"] = time.perf_counter() - t
        scan["vmhwm_mb"] = peak_rss_mb()
        return s

    streaming.TrainingStream.open = timed_open
    tc = dict(epochs=args.epochs, min_epochs=args.epochs, batch_size=args.batch_size, progress=False, device="cpu",
              stream_chunk_size=args.chunk_size, stream_buffer_chunks=args.buffer_chunks, seed=0)
    if not args.post_training:
        tc.update(proposal_steps=0, calibrate_posterior=False)
    t0 = time.perf_counter()
    d = fit_streaming(dc2_path("training"), args.unlabelled, train_config=tc, group="photometry",
                      resolve=rail_resolver)
    wall = time.perf_counter() - t0
    rep = d["report"]
    res = {"rows": args.rows, "n_labelled": rep["n_labelled"], "n_unlabelled": rep["n_unlabelled"],
           "n_validation": rep["n_validation"], "alpha": rep["alpha"], "decoder": d["model_config"]["decoder"],
           "hidden": d["model_config"]["hidden"], "fit_wall_s": wall, "scan_wall_s": scan.get("wall_s"),
           "vmhwm_after_scan_mb": scan.get("vmhwm_mb"), "vmhwm_after_training_mb": epochs[-1]["vmhwm_mb"],
           "epochs": epochs, "steps_per_epoch": counted["per_epoch"], "peak_rss_mb_vmhwm": peak_rss_mb(),
           "rss_after_imports_mb": rss0, "threads": torch.get_num_threads()}
    with open(args.result, "w") as fh:
        json.dump(res, fh)
    return 0


def _run_child(argv: list[str], timeout: float) -> tuple[int, float]:
    """Run a child process; its exit status and its own peak RSS in MB (``ru_maxrss`` from ``wait4``)."""
    p = subprocess.Popen(argv)
    t0 = time.monotonic()
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, usage.ru_maxrss / 1024.0
        if time.monotonic() - t0 > timeout:
            p.kill()
        time.sleep(0.5)


def write_markdown(path: str, meta: dict, runs: list[dict]) -> None:
    limited = any(r.get("limited") for r in runs)
    lines = [
        "# Streamed training: memory and time against the unlabelled rows",
        "",
        f"Generated by `benchmarks/stream_train.py` on {meta['date']} ({meta['host']}, CPU, {meta['threads']} torch "
        f"thread(s), niceness {meta.get('niceness', 0)}, training precision {meta.get('precision', '?')}); the "
        f"default model ({meta['decoder']} decoder, "
        f"hidden {meta['hidden']}), {meta['epochs']} epoch(s), batch_size {meta['batch_size']}, stream_chunk_size "
        f"{meta['chunk_size']}, stream_buffer_chunks {meta['buffer_chunks']}.  Labelled: RAIL's DC2 training file "
        "(10,225 rows, 10 % held out); unlabelled: N DC2 training rows drawn with replacement, magnitudes redrawn "
        "from their errors (clipped at 2 mag), in an hdf5 file streamed chunk by chunk "
        "(`photovaez.api.fit_streaming`).  Each N is a fresh process; peak RSS is its `ru_maxrss` as the "
        "parent's `wait4` reports it (and its own `VmHWM`), "
        "torch, JAX and RAIL imports included; the high-water marks after the imports, the scan and the training "
        "epochs show where the memory goes (the rest is the post-training calibration on the held-out labels).",
        "",
        "| unlabelled rows | training rows | peak RSS [MB] | VmHWM [MB] | VmHWM after imports / scan / training "
        "[MB] | scan [s] | epoch [s] | steps run / per epoch | whole fit [s] |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['rows']:,} | failed: {r['error']} | | | | | | | |")
            continue
        e = r["epochs"][0]
        note = " (extrapolated)" if r.get("limited") else ""
        lines.append(f"| {r['rows']:,} | {r['n_labelled'] + r['n_unlabelled']:,} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb_vmhwm']:.0f} | {r['rss_after_imports_mb']:.0f} / {r['vmhwm_after_scan_mb']:.0f}"
                     f" / {r['vmhwm_after_training_mb']:.0f} | {r['scan_wall_s']:.1f} | "
                     f"{r['epoch_s']:.1f}{note} | {e['steps']:,} / {r['steps_per_epoch']:,} | {r['fit_wall_s']:.1f} |")
    ok = [r for r in runs if "error" not in r]
    if len(ok) >= 2:
        lo, hi = min(ok, key=lambda r: r["rows"]), max(ok, key=lambda r: r["rows"])
        ratio = hi["peak_rss_mb"] / lo["peak_rss_mb"]
        lines += ["", f"Peak RSS at {hi['rows']:,} rows / at {lo['rows']:,} rows: **{ratio:.2f}** (target <= 1.25: "
                  f"{'met' if ratio <= 1.25 else 'missed'}); VmHWM ratio "
                  f"{hi['peak_rss_mb_vmhwm'] / lo['peak_rss_mb_vmhwm']:.2f}."]
    if limited:
        lines += ["", f"Epochs were stopped after `--max-steps {meta['max_steps']}` steps: the epoch times marked "
                  "extrapolated are the measured time per step times the steps of a full epoch (memory is still the "
                  "full scan over every row plus those steps' reads)."]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="unlabelled rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--buffer-chunks", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (0 = no limit)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the child")
    ap.add_argument("--post-training", action="store_true", help="also fit the proposal and the posterior calibration")
    ap.add_argument("--work", default=None, help="folder for the synthetic files (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep --work afterwards")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--unlabelled", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--child-rows", dest="child_rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.rows = args.child_rows
        return _child(args)

    logging.basicConfig(level=logging.INFO, format="[stream_train] %(message)s")
    work = args.work or tempfile.mkdtemp(prefix="photovaez_stream_train_")
    os.makedirs(work, exist_ok=True)
    runs = []
    try:
        for n in args.rows:
            path = os.path.join(work, f"unlabelled_{n}.hdf5")
            if not os.path.exists(path):
                t = time.perf_counter()
                synthesise(path, n)
                log.info("wrote %s (%.0f MB) in %.1f s", path, os.path.getsize(path) / 2**20, time.perf_counter() - t)
            result = os.path.join(work, f"result_{n}.json")
            child = [sys.executable, os.path.abspath(__file__), "--child", "--unlabelled", path, "--result", result,
                     "--child-rows", str(n), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                     "--chunk-size", str(args.chunk_size), "--buffer-chunks", str(args.buffer_chunks),
                     "--max-steps", str(args.max_steps), "--threads", str(args.threads)]
            if args.post_training:
                child.append("--post-training")
            rc, rss = _run_child(child, args.timeout)
            if rc != 0 or not os.path.exists(result):
                runs.append({"rows": n, "error": f"exit status {rc}"})
                continue
            with open(result) as fh:
                r = json.load(fh)
            e = r["epochs"][0]
            r["peak_rss_mb"] = rss
            r["limited"] = e["steps"] < r["steps_per_epoch"]
            r["epoch_s"] = e["wall_s"] * r["steps_per_epoch"] / max(e["steps"], 1)
            runs.append(r)
            log.info("%d rows: peak RSS %.0f MB, epoch %.1f s%s", n, rss, r["epoch_s"],
                     " (extrapolated)" if r["limited"] else "")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in runs if "error" not in r]
    from photovaez.config import TrainConfig

    meta = {"date": time.strftime("%Y-%m-%d"), "host": platform.node() or "unknown", "epochs": args.epochs,
            "niceness": os.nice(0), "precision": TrainConfig().precision,
            "batch_size": args.batch_size, "chunk_size": args.chunk_size, "buffer_chunks": args.buffer_chunks,
            "max_steps": args.max_steps, "threads": args.threads, "post_training": args.post_training,
            "decoder": ok[0]["decoder"] if ok else "?", "hidden": ok[0]["hidden"] if ok else "?"}
    if len(ok) >= 2:
        lo, hi = min(ok, key=lambda r: r["rows"]), max(ok, key=lambda r: r["rows"])
        meta["rss_ratio"] = hi["peak_rss_mb"] / lo["peak_rss_mb"]
        meta["target_met"] = meta["rss_ratio"] <= 1.25
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stream_train.json"), "w") as fh:
        json.dump({"meta": meta, "runs": runs}, fh, indent=1)
    write_markdown(os.path.join(args.out, "stream_train.md"), meta, runs)
    print(json.dumps({"meta": meta, "runs": [{k: r.get(k) for k in ("rows", "peak_rss_mb", "epoch_s", "limited")}
                                             for r in runs]}, indent=1))
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
