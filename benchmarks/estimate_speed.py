#!/usr/bin/env python
"""Wall time of PhotoVAEzEstimator (amortised mode) on all 20,449 DC2 validation galaxies.

    python benchmarks/estimate_speed.py --model /tmp/models/model_full_mlp.pkl   # e.g. from dc2.py --save-models

Runs the RAIL stage ``--repeat`` times (output_mode="return", chunk_size 10000) and writes
``<out>/estimate_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a PhotoVAEz model file (outside the repository)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=10000)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    import torch

    from photovaez.io import load_model
    from rail.estimation.algos.photovaez import PhotoVAEzEstimator
    from rail.photovaez.data import read_dc2

    data = read_dc2("validation")
    model = load_model(args.model)
    times = []
    for i in range(args.repeat):
        est = PhotoVAEzEstimator.make_stage(name=f"speed_{i}", model=model, chunk_size=args.chunk_size,
                                            hdf5_groupname="", output_mode="return")
        t0 = time.perf_counter()
        n = est.estimate(data).data.npdf
        times.append(time.perf_counter() - t0)
    res = {"n_galaxies": int(n), "wall_s": times, "best_s": min(times), "torch_threads": torch.get_num_threads(),
           "chunk_size": args.chunk_size, "cpu_count": os.cpu_count()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "estimate_speed.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "estimate_speed.md"), "w") as f:
        f.write("| galaxies | runs [s] | best [s] | galaxies/s | torch threads |\n|---|---|---|---|---|\n")
        f.write(f"| {n} | {', '.join(f'{t:.2f}' for t in times)} | {min(times):.2f} | {n / min(times):,.0f} | "
                f"{res['torch_threads']} |\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
