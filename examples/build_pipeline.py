#!/usr/bin/env python
"""Build a ceci pipeline: PhotoVAEz inform -> estimate -> RAIL evaluation.

Writes ``<yml>`` (the pipeline) and ``<yml stem>_config.yml`` (the stage configuration), then
run it with ``ceci <yml>``.  The input files are subsets of RAIL's DC2 test files (or files you
name), written to the output folder, so that a small run (e.g. in CI) takes seconds::

    python examples/build_pipeline.py --output-dir /tmp/pvz_pipe --n-train 400 --n-test 300 \
        --epochs 3 --hidden 32,32
    cd /tmp/pvz_pipe && ceci photovaez_pipeline.yml

The generated yml files hold absolute paths, so they are generated at run time and not kept in
the repository.  By default they go into the output folder.

Stages (instance names): ``inform_photovaez`` (labelled training subset plus an optional
unlabelled subset: more training-file rows with their redshifts removed), ``estimate_photovaez``
(the test subset; output ``output_estimate_photovaez.hdf5``), and ``evaluate_photovaez``
(:class:`rail.evaluation.single_evaluator.SingleEvaluator`: PDF metrics (PIT, CDE loss, ...) of the
PDFs and point metrics of ``zmode`` against the true redshifts; outputs
``output_evaluate_photovaez.hdf5``, ``summary_evaluate_photovaez.hdf5``,
``single_distribution_summary_evaluate_photovaez.hdf5``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from rail.photovaez.data import DC2_FILES, GROUP, dc2_path, read_dc2


def _write_subset(table: dict[str, np.ndarray], rows: slice, path: str, drop: tuple[str, ...] = ()) -> int:
    import tables_io

    sub = {k: np.ascontiguousarray(v[rows]) for k, v in table.items() if k not in drop}
    tables_io.write({GROUP: sub}, path)
    return len(next(iter(sub.values())))


def make_inputs(train_file: str, test_file: str, output_dir: str, n_train: int, n_test: int,
                n_unlabeled: int) -> dict[str, str]:
    """Write the subset files into ``output_dir`` and return the pipeline's overall inputs."""
    os.makedirs(output_dir, exist_ok=True)
    train = read_dc2(train_file)
    test = read_dc2(test_file)
    n_all = len(train["redshift"]) if "redshift" in train else len(next(iter(train.values())))
    if n_train + n_unlabeled > n_all:
        raise ValueError(f"{train_file} has {n_all} rows, fewer than n_train + n_unlabeled = {n_train + n_unlabeled}")
    inputs = {}
    inputs["input_train"] = os.path.join(output_dir, "train_subset.hdf5")
    _write_subset(train, slice(0, n_train), inputs["input_train"])
    inputs["input_test"] = os.path.join(output_dir, "test_subset.hdf5")
    _write_subset(test, slice(0, n_test), inputs["input_test"])
    if n_unlabeled > 0:
        inputs["input_unlabeled"] = os.path.join(output_dir, "unlabeled_subset.hdf5")
        _write_subset(train, slice(n_train, n_train + n_unlabeled), inputs["input_unlabeled"], drop=("redshift",))
    inputs = {k: os.path.abspath(v) for k, v in inputs.items()}
    # ceci wants every input of a stage connected: "None" is the informer's "no unlabelled table"
    inputs.setdefault("input_unlabeled", "None")
    return inputs


def build_pipeline(inform_config: dict, estimate_config: dict,
                   posteriors: tuple[str, ...] = ("amortized",), posterior_config: dict | None = None):
    """The :class:`rail.core.stage.RailPipeline`: inform, then one estimate + evaluate pair per
    posterior mode (``estimate_photovaez`` / ``evaluate_photovaez`` for the amortised mode,
    ``estimate_photovaez_<mode>`` / ``evaluate_photovaez_<mode>`` for grid, hmc, snis)."""
    posterior_config = posterior_config or {}
    from rail.core.stage import RailPipeline
    from rail.evaluation.single_evaluator import SingleEvaluator

    from rail.estimation.algos.photovaez import PhotoVAEzEstimator, PhotoVAEzInformer

    class PhotoVAEzPipeline(RailPipeline):
        def __init__(self) -> None:
            RailPipeline.__init__(self)
            aliases = dict(input="input_train", unlabeled="input_unlabeled")
            self.inform_photovaez = PhotoVAEzInformer.build(aliases=aliases, **inform_config)
            for mode in posteriors:
                suffix = "" if mode == "amortized" else f"_{mode}"
                cfg = dict(estimate_config, posterior=mode, **(posterior_config if mode != "amortized" else {}))
                if mode != "hmc":
                    cfg = {k: v for k, v in cfg.items() if not k.startswith("hmc_")}
                est = PhotoVAEzEstimator.build(
                    aliases=dict(input="input_test"),
                    connections=dict(model=self.inform_photovaez.io.model),
                    **cfg,
                )
                setattr(self, f"estimate_photovaez{suffix}", est)
                setattr(self, f"evaluate_photovaez{suffix}", self._evaluator(est))

        def _evaluator(self, est):
            return SingleEvaluator.build(
                aliases=dict(truth="input_test"),
                connections=dict(input=est.io.output),
                point_estimates=["zmode"],
                truth_point_estimates=["redshift"],
                metrics=["all"],
                metric_config=dict(brier=dict(limits=[0.0, 3.0])),
                exclude_metrics=["rmse", "ks", "kld", "cvm", "ad", "rbpe", "outlier"],
                hdf5_groupname=GROUP,
                # exact single-node metrics: the chunked point metrics need pytdigest, which
                # pz-rail-base does not install
                force_exact=True,
            )

    return PhotoVAEzPipeline()


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-file", default=None, help=f"training hdf5 (default: RAIL's {DC2_FILES['training']})")
    p.add_argument("--test-file", default=None, help=f"test hdf5 (default: RAIL's {DC2_FILES['validation']})")
    p.add_argument("--output-dir", default="examples/output", help="folder for subsets, yml files and outputs")
    p.add_argument("--yml", default=None, help="pipeline yml path (default: <output-dir>/photovaez_pipeline.yml)")
    p.add_argument("--n-train", type=int, default=4000, help="labelled training galaxies")
    p.add_argument("--n-test", type=int, default=2000, help="test galaxies")
    p.add_argument("--n-unlabeled", type=int, default=0,
                   help="further training-file rows used without their redshift (0 = none)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", default="512,256,128", help="hidden-layer widths, comma separated")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=10000, help="estimator chunk size")
    p.add_argument("--n-b-samples", type=int, default=16)
    p.add_argument("--posteriors", nargs="+", default=["amortized"],
                   choices=["amortized", "grid", "hmc", "snis", "joint", "auto"],
                   help="estimator modes, one estimate + evaluate stage pair each (default: amortized)")
    p.add_argument("--n-importance", type=int, default=0, help="importance samples for grid/hmc/snis (0 = default)")
    p.add_argument("--hmc-num-warmup", type=int, default=300)
    p.add_argument("--hmc-num-samples", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--proposal-steps", type=int, default=100,
                   help="informer: Adam steps fitting the importance proposal (0 = none)")
    p.add_argument("--no-posterior-calibration", dest="calibrate_posterior", action="store_false",
                   help="informer: skip the snis posterior's calibration")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    train_file = args.train_file or dc2_path("training")
    test_file = args.test_file or dc2_path("validation")
    out = os.path.abspath(args.output_dir)
    inputs = make_inputs(train_file, test_file, out, args.n_train, args.n_test, args.n_unlabeled)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    inform_config = dict(hdf5_groupname=GROUP, hidden=hidden, epochs=args.epochs, batch_size=args.batch_size,
                         min_epochs=min(20, args.epochs), seed=args.seed, device=args.device,
                         proposal_steps=args.proposal_steps, calibrate_posterior=args.calibrate_posterior)
    estimate_config = dict(hdf5_groupname=GROUP, chunk_size=args.chunk_size, n_b_samples=args.n_b_samples,
                           seed=args.seed, device=args.device)
    posterior_config = dict(n_importance=args.n_importance, hmc_num_warmup=args.hmc_num_warmup,
                            hmc_num_samples=args.hmc_num_samples)
    pipe = build_pipeline(inform_config, estimate_config,
                          tuple(dict.fromkeys(args.posteriors)), posterior_config)
    yml = os.path.abspath(args.yml or os.path.join(out, "photovaez_pipeline.yml"))
    os.makedirs(os.path.dirname(yml), exist_ok=True)
    # ceci 2.7 breaks RailPipeline.build_and_write (stage_execution_config), so initialise and save directly
    pipe.initialize(inputs, dict(output_dir=out, log_dir=out, resume=False), None)
    pipe.save(yml)
    print(f"wrote {yml} and {os.path.splitext(yml)[0]}_config.yml; run: ceci {yml}")
    return yml


if __name__ == "__main__":
    main(sys.argv[1:])
