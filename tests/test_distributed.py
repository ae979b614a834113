"""Data-parallel training (photovaez.distributed): two CPU processes (gloo, torch.multiprocessing
spawn) against one process fed the same global batches.

One spawn runs three tiny scenarios in each process: rows in memory; rows in memory with a huge
gradient planted on rank 1 only at one step under a fixed skip threshold; and a streamed file
(each process reading its shard of the chunks).  Their weights, histories and skip counters are
compared with a one-process run of the same data path with ``DistContext(explicit_noise=True)``
(the whole global batch's noise drawn from the shared generator, as the two processes draw it).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from photovaez.distributed import DistContext
from photovaez.features import FeatureSpec, affine_map, clean_photometry, fit_scaler
from photovaez.model import ModelConfig
from photovaez.train import TrainConfig, TrainingArrays, train_sdgm

SMALL = ModelConfig(dim_x=11, dim_a=3, dim_b=3, hidden=[16, 16], decoder="mlp")
# float32: W processes equal one process to float rounding; bfloat16 matrix products of half-batches
# round differently from whole ones (TrainConfig.precision)
CFG = dict(epochs=2, batch_size=64, progress=False, validation_fraction=0.2, seed=5, device="cpu",
           grad_skip_warmup=3, min_epochs=2, precision="float32")
SKIP_THRESHOLD = 1e6  # far above this model's gradient norms (~10-100), far below the planted one
PLANT_STEP = 3


def _data(table):
    spec = FeatureSpec()
    p = clean_photometry(table, spec)
    z = np.asarray(table["redshift"], float).copy()
    lab = np.arange(len(z)) < 150
    z[~lab] = np.nan
    errors = np.concatenate([p.errs, np.zeros_like(p.extras)], axis=1)
    return TrainingArrays(p.values, errors, z, lab), affine_map(spec, fit_scaler(p, spec))


def _plant(monkeypatch_target, rank_to_plant: int | None, rank: int):
    """Multiply the training loss of call PLANT_STEP by 1e12 (on ``rank_to_plant`` only; None = every rank)."""
    import photovaez.train as tr

    real = tr.batch_loss
    calls = {"n": 0}

    def planted(*a, **k):
        loss, rep = real(*a, **k)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == PLANT_STEP and (rank_to_plant is None or rank == rank_to_plant):
                loss = loss * 1e12
        return loss, rep

    monkeypatch_target(tr, "batch_loss", planted)
    return lambda: setattr(tr, "batch_loss", real)


def _scenarios(table, stream_path, dist: DistContext, rank: int, set_attr) -> dict:
    import photovaez.train as tr
    from photovaez.streaming import TrainingStream

    data, fmap = _data(table)
    out = {}
    norms: list[float] = []
    real_accept = tr.GradientSkipper.accept

    def accept(self, grad_norm):  # record the (all-reduced) gradient norm of every step
        norms.append(grad_norm)
        return real_accept(self, grad_norm)

    set_attr(tr.GradientSkipper, "accept", accept)
    try:
        model, rep = train_sdgm(data, fmap, SMALL, TrainConfig(**CFG), distributed=dist)
    finally:
        set_attr(tr.GradientSkipper, "accept", real_accept)
    out["memory"] = (model.state_dict(), {**rep, "grad_norms": norms})
    undo = _plant(set_attr, 1 if dist.world_size > 1 else None, rank)
    try:
        model, rep = train_sdgm(data, fmap, SMALL, TrainConfig(**CFG, grad_skip_threshold=SKIP_THRESHOLD),
                                distributed=dist)
    finally:
        undo()
    out["skip"] = (model.state_dict(), rep)
    spec = FeatureSpec()
    stream = TrainingStream.open(stream_path, None, spec, SMALL, "redshift", "photometry", chunk_size=40,
                                 buffer_chunks=2, validation_fraction=0.1, seed=5)
    try:
        model, rep = train_sdgm(stream, affine_map(spec, stream.scaler), SMALL, TrainConfig(**CFG), distributed=dist)
    finally:
        stream.close()
    out["stream"] = (model.state_dict(), rep)
    return out


def _worker(rank: int, world: int, port: int, table: dict, stream_path: str, out_dir: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        ctx = DistContext.from_torch()
        assert (ctx.rank, ctx.world_size, ctx.explicit_noise) == (rank, world, True)
        out = _scenarios(table, stream_path, ctx, rank, setattr)
        torch.save({k: (w, {kk: rep[kk] for kk in ("history", "n_steps", "n_skipped", "world_size", "grad_norms")
                            if kk in rep})
                    for k, (w, rep) in out.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(dc2_tables, tmp_path_factory):
    import tables_io
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("ddp")
    table = {k: np.asarray(v[:260]) for k, v in dc2_tables[0].items()}
    path = str(d / "train.hdf5")
    tables_io.write({"photometry": table}, path)
    mp.spawn(_worker, args=(2, _free_port(), table, path, str(d)), nprocs=2, join=True)
    ranks = [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]
    torch.set_num_threads(1)
    ref = _scenarios(table, path, DistContext(explicit_noise=True), 0, setattr)
    plain = train_sdgm(*_data(table), SMALL, TrainConfig(**CFG))[0].state_dict()
    return ranks, ref, plain


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("scenario", ["memory", "skip", "stream"])
def test_two_processes_train_like_one_fed_the_same_global_batches(runs, scenario):
    ranks, ref, _ = runs
    w0, r0 = ranks[0][scenario]
    w1, r1 = ranks[1][scenario]
    _assert_same_weights(w0, w1, atol=0)  # the ranks hold the same model, bit for bit
    assert r0 == r1  # same steps, skips and (all-reduced) losses on both ranks
    assert r0["world_size"] == 2
    if scenario == "stream":
        # each rank streamed its own shard: the global batches are not those of one process reading
        # the whole file in order, so only the epoch structure is compared with one process
        assert r0["n_steps"] == ref[scenario][1]["n_steps"]
        return
    w_ref, r_ref = ref[scenario]
    _assert_same_weights(w0, w_ref, atol=1e-5)
    assert r0["n_steps"] == r_ref["n_steps"] and r0["n_skipped"] == r_ref["n_skipped"]
    np.testing.assert_allclose(r0["history"]["train_loss"], r_ref["history"]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(r0["history"]["val_loss"], r_ref["history"]["val_loss"], rtol=1e-5)


def test_gradients_are_averaged_to_the_global_batch_gradient(runs):
    """Adam hardly sees a constant factor on the gradients, so the weights alone would not catch a
    sum instead of a mean: the gradient norms of every step must be those of one process, on the
    global batches whose last one splits unevenly over the ranks (ragged parts: 208 rows = 3 x 64
    + 16, then 8 + 8; the even split is exercised too)."""
    ranks, ref, _ = runs
    n0, n1, n_ref = (r["memory"][1]["grad_norms"] for r in (ranks[0], ranks[1], ref))
    assert len(n0) == len(n_ref) == 8
    assert n0 == n1
    np.testing.assert_allclose(n0, n_ref, rtol=1e-4)


def test_a_gradient_planted_on_one_rank_is_skipped_by_both(runs):
    ranks, ref, _ = runs
    assert ranks[0]["skip"][1]["n_skipped"] == ranks[1]["skip"][1]["n_skipped"] == 1
    assert ref["skip"][1]["n_skipped"] == 1
    # the skip took effect: the run with the skipped step ends elsewhere than the one without
    w_plain, w_skip = ranks[0]["memory"][0], ranks[0]["skip"][0]
    assert any(not torch.equal(w_plain[k], w_skip[k]) for k in w_plain)


def test_explicit_noise_reference_is_a_valid_training_run(runs):
    """The one-process reference differs from plain training only in where its Monte-Carlo draws
    come from: same shapes, finite weights, different values."""
    _, ref, plain = runs
    w = ref["memory"][0]
    assert all(torch.isfinite(v).all() for v in w.values())
    assert any(not torch.equal(w[k], plain[k]) for k in w)
