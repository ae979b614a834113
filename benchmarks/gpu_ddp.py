#!/usr/bin/env python
"""Data-parallel training on every GPU present (run by benchmarks/gpu.sh): 10^6 galaxies x 1 epoch.

The unlabelled file is synthesised from RAIL's DC2 training sample as in
``benchmarks/stream_train.py`` (:func:`stream_train.synthesise`); the labelled file is the DC2
training file.  For W = 1 and W = the number of GPUs (when more than one) the default model is
trained for one epoch with ``torchrun --standalone --nproc-per-node W -m photovaez.distributed``
(NCCL, each rank on ``cuda:LOCAL_RANK``, streamed from the files in chunks), without the
post-training steps; the wall time of the epoch is the training time in the model's report.
Target: 10^6 galaxies x 1 epoch in <= 10 s.

    python benchmarks/gpu_ddp.py --labelled DC2_TRAIN.hdf5 --work /tmp/ddp --out gpu_ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelled", required=True, help="DC2 training hdf5 (group photometry)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="unlabelled rows")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--work", required=True, help="folder for the synthetic file and the models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from gpu import read_dc2  # RAIL's DC2 reader without importing RAIL
    from stream_train import synthesise

    os.makedirs(args.work, exist_ok=True)
    unl = os.path.join(args.work, f"unlabelled_{args.rows}.hdf5")
    if not os.path.exists(unl):
        synthesise(unl, args.rows, source=read_dc2(args.labelled))
    n_gpu = torch.cuda.device_count()
    results = []
    for world in sorted({1, n_gpu} - {0}):
        model_path = os.path.join(args.work, f"model_w{world}.pkl")
        cmd = ["torchrun", "--standalone", f"--nproc-per-node={world}", "-m", "photovaez.distributed",
               args.labelled, "--unlabelled", unl, "--group", "photometry", "--output", model_path,
               "--set", "epochs=1", "--set", f"batch_size={args.batch_size}", "--set", "proposal_steps=0",
               "--set", "calibrate_posterior=false", "--set", "calibrate=false",
               "--set", f"stream_chunk_size={args.chunk_size}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        row = {"world_size": world, "rows": args.rows, "batch_size": args.batch_size, "returncode": proc.returncode,
               "wall_s": wall}
        if proc.returncode == 0:
            from photovaez.io import load_model

            rep = load_model(model_path)["report"]
            row.update(train_s=rep["wall_time_s"], steps=rep["n_steps"], skipped=rep["n_skipped"],
                       galaxies_per_s=(args.rows + 10_225) / rep["wall_time_s"])
        else:
            row["stderr_tail"] = proc.stderr[-3000:]
        results.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
