"""Data-parallel training on several processes (and GPUs) with ``torch.distributed``.

Every process holds the same model and trains on its own part of each global mini-batch: in
memory, process r takes the r-th of W equal slices of every batch of the shared seeded order; when
streaming from files (:mod:`photovaez.streaming`), process r reads its own shard of each file's
chunks and contributes its shard's share of every batch.  The global batch is the concatenation
of the parts, in rank order.  The model is wrapped in ``DistributedDataParallel``, whose gradient
all-reduce averages over processes; each process scales its loss by ``W n_r / n`` (its rows n_r
of the global n) so that the averaged gradient is the gradient of the global batch mean, the
SPEC's unbiased estimate of J / (N_s + N_p).  The photometric resampling noise and the Monte-Carlo
draws of the loss are drawn for the whole global batch from the generator every process shares
(each process uses its rows' slice), so W processes give the weights of one process fed the same
global batches, to floating-point rounding.  The gradient norm that gradient skipping tests, the
epoch's training loss and the validation loss are all-reduced, so every process skips the same
steps and stops at the same epoch; only rank 0 writes files (checkpoints, the model).

Launch with ``torchrun`` (one node: ``torchrun --standalone --nproc-per-node 4 -m
photovaez.distributed ...``) or under SLURM (``srun torchrun --nnodes $SLURM_NNODES
--nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint $head:29500 -m photovaez.distributed ...``);
see docs/distributed.md.  :func:`init_from_env` reads torchrun's ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``, starts the process group (``nccl`` on GPUs, ``gloo`` on CPUs) and picks the device
``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "init_from_env", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run.

    Attributes
    ----------
    rank, world_size, local_rank
        This process's index, the number of processes, and its index on its node.
    explicit_noise
        Draw the Monte-Carlo noise of the loss for the whole global batch from the training
        generator (set whenever ``world_size > 1``; a one-process run with it set is the reference
        that W processes reproduce).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    explicit_noise: bool = False

    @classmethod
    def from_torch(cls) -> DistContext:
        """The context of an initialised ``torch.distributed`` process group (one process without one)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """The sums over processes of ``values`` (themselves with one process)."""
        if self.world_size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def all_reduce_max(self, value: float) -> float:
        """The largest ``value`` over processes; a NaN anywhere gives ``inf``."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value if not math.isnan(value) else math.inf], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


def init_from_env(backend: str | None = None) -> tuple[DistContext, torch.device]:
    """Start the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and pick this process's device.

    Parameters
    ----------
    backend
        ``nccl`` or ``gloo``; default ``nccl`` when CUDA is available, else ``gloo``.

    Returns
    -------
    context, device
        The :class:`DistContext` and ``cuda:LOCAL_RANK`` (GPUs) or the CPU.  Without a torchrun
        environment (no ``WORLD_SIZE``) no group is started: one process on ``cuda`` or the CPU.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(), torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    ctx = DistContext.from_torch()
    return ctx, torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m photovaez.distributed LABELLED [--unlabelled U] --output model.pkl [--set key=value ...]``:
    train from hdf5/parquet files on every process torchrun started (streamed when
    ``stream_chunk_size`` > 0, read into memory otherwise); rank 0 writes the model file.

    ``--set`` takes any :class:`photovaez.config.ModelConfig` or :class:`~photovaez.config.TrainConfig`
    option (values are JSON, e.g. ``--set hidden=[256,128] --set epochs=20``); ``--preset``
    names the feature set (default ``lsst``).
    """
    from .api import fit, fit_streaming
    from .config import ModelConfig, TrainConfig, options
    from .features import preset
    from .io import save_model

    p = argparse.ArgumentParser(prog="python -m photovaez.distributed", description=main.__doc__)
    p.add_argument("labelled", help="hdf5 or parquet file of labelled photometry")
    p.add_argument("--unlabelled", default=None, help="hdf5 or parquet file of unlabelled photometry")
    p.add_argument("--output", required=True, help="model file written by rank 0")
    p.add_argument("--group", default="", help="hdf5 group of the tables (RAIL's hdf5_groupname)")
    p.add_argument("--redshift-col", default="redshift")
    p.add_argument("--preset", default="lsst", help="feature preset (lsst, sdss_mgs, sdss_wise)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model or training option")
    p.add_argument("--backend", default=None, help="nccl or gloo (default: nccl with CUDA, else gloo)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank " + os.environ.get("RANK", "0")
                        + " %(name)s: %(message)s")
    model_keys = {o.name for o in options(ModelConfig)}
    train_keys = {o.name for o in options(TrainConfig)}
    mc, tc = {}, {"progress": False}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep or key not in model_keys | train_keys:
            p.error(f"--set {item!r}: expected KEY=VALUE with KEY a ModelConfig or TrainConfig option")
        (mc if key in model_keys else tc)[key] = _value(val)
    ctx, device = init_from_env(args.backend)
    tc.setdefault("device", str(device))
    spec = preset(args.preset)
    try:
        from rail.photovaez.data import rail_resolver as resolve
    except ImportError:  # pragma: no cover - RAIL is only needed for the "rail:<path>" filter / template specs
        resolve = None
    if int(tc.get("stream_chunk_size", 0)) > 0:
        model = fit_streaming(args.labelled, args.unlabelled, spec, mc, tc, redshift_col=args.redshift_col,
                              resolve=resolve, group=args.group, distributed=ctx)
    else:
        from .streaming import open_table

        tables = []
        for path in (args.labelled, args.unlabelled):
            if path is None:
                tables.append(None)
                continue
            with open_table(path, args.group) as r:
                tables.append(r.read(0, r.n_rows, r.columns))
        model = fit(tables[0], tables[1], spec, mc, tc, redshift_col=args.redshift_col, resolve=resolve,
                    distributed=ctx)
    if ctx.is_main:
        save_model(model, args.output)
        log.info("wrote %s", args.output)
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
