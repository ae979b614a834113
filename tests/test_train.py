import math

import numpy as np
import pytest
import torch

from photovaez.features import FeatureSpec, affine_map, clean_photometry, fit_scaler
from photovaez.model import SDGM, ModelConfig
from photovaez.train import (
    AffineFeatures,
    GradientSkipper,
    TensorArrays,
    TrainConfig,
    TrainingArrays,
    TrainingState,
    load_checkpoint,
    resample_values,
    save_checkpoint,
    train_epoch,
    train_sdgm,
)

SMALL = ModelConfig(dim_x=11, dim_a=3, dim_b=3, hidden=[16, 16], decoder="mlp")


def _data(dc2_tables, n_lab=200, n=300):
    t = dc2_tables[0]
    spec = FeatureSpec()
    tab = {k: v[:n] for k, v in t.items()}
    p = clean_photometry(tab, spec)
    z = tab["redshift"].astype(float).copy()
    lab = np.arange(n) < n_lab
    z[~lab] = np.nan
    errors = np.concatenate([p.errs, np.zeros_like(p.extras)], axis=1)
    return TrainingArrays(p.values, errors, z, lab), affine_map(spec, fit_scaler(p, spec))


def _cfg(**kw):
    base = dict(epochs=3, batch_size=64, progress=False, validation_fraction=0.2, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def test_gradient_skipper_counts_and_thresholds():
    s = GradientSkipper(threshold=10.0)
    assert s.accept(5.0)
    assert not s.accept(1e6)
    assert not s.accept(math.nan)
    assert not s.accept(math.inf)
    assert (s.n_steps, s.n_skipped, s.n_nonfinite) == (4, 3, 2)
    a = GradientSkipper(threshold=None, factor=10.0, warmup=5)
    for _ in range(5):
        assert a.accept(1.0)
    assert a.current_threshold() == pytest.approx(10.0)
    assert a.accept(9.0) and not a.accept(11.0)
    assert a.skipped_fraction == pytest.approx(1 / 7)


def test_skipped_steps_never_touch_the_weights(dc2_tables):
    """With a threshold below every gradient norm, every step is skipped: the trained weights are
    exactly the seeded initial weights and the report counts every step."""
    data, fmap = _data(dc2_tables)
    model, rep = train_sdgm(data, fmap, SMALL, _cfg(grad_skip_threshold=1e-12, epochs=2, patience=100))
    torch.manual_seed(7)
    init = SDGM(SMALL)
    for k, v in init.state_dict().items():
        if k.endswith(("weight", "bias")):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert rep["n_skipped"] == rep["n_steps"] > 0
    assert rep["skipped_fraction"] == 1.0


def test_planted_nonfinite_gradient_is_skipped(dc2_tables, monkeypatch):
    """A NaN planted into one step's loss is skipped and counted; training carries on."""
    import photovaez.train as tr

    data, fmap = _data(dc2_tables)
    calls = {"n": 0}
    real = tr.batch_loss

    def poisoned(*a, **k):
        loss, rep = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            loss = loss * float("nan")
        return loss, rep

    monkeypatch.setattr(tr, "batch_loss", poisoned)
    model, rep = train_sdgm(data, fmap, SMALL, _cfg(epochs=1, validation_fraction=0.0))
    assert rep["n_nonfinite"] == 1 and rep["n_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_fixed_seed_reproduces_the_model(dc2_tables):
    data, fmap = _data(dc2_tables)
    m1, r1 = train_sdgm(data, fmap, SMALL, _cfg())
    m2, r2 = train_sdgm(data, fmap, SMALL, _cfg())
    m3, _ = train_sdgm(data, fmap, SMALL, _cfg(seed=8))
    for k in m1.state_dict():
        torch.testing.assert_close(m1.state_dict()[k], m2.state_dict()[k], rtol=0, atol=0)
    assert r1["history"] == r2["history"]
    key = "q_b_given_x_net.head.weight"
    assert not torch.equal(m1.state_dict()[key], m3.state_dict()[key])


def test_split_alpha_and_early_stopping(dc2_tables):
    data, fmap = _data(dc2_tables, n_lab=200, n=300)
    _, rep = train_sdgm(data, fmap, SMALL, _cfg(validation_fraction=0.2, epochs=3))
    assert rep["n_labelled"] == 160 and rep["n_unlabelled"] == 80 and rep["n_validation"] == 60
    assert rep["alpha"] == pytest.approx(240 / 160)
    _, rep = train_sdgm(data, fmap, SMALL, _cfg(epochs=200, patience=2, min_epochs=1, learning_rate=0.3))
    assert rep["epochs_run"] < 200
    assert rep["best_val_loss"] == pytest.approx(min(rep["history"]["val_loss"]))
    assert rep["best_epoch"] == int(np.argmin(rep["history"]["val_loss"])) + 1


def test_resampling_draws_from_errors_and_recomputes_colours():
    spec = FeatureSpec(bands=["a", "b"], err_bands=["ea", "eb"], extra_cols=["ext"])
    v = torch.tensor([[20.0, 21.0, 0.5]]).repeat(20000, 1)
    e = torch.tensor([[0.1, 0.3, 0.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    r = resample_values(v, e, 0.5, g)
    np.testing.assert_allclose(r[:, 0].std().item(), 0.05, rtol=0.03)
    np.testing.assert_allclose(r[:, 1].std().item(), 0.15, rtol=0.03)
    np.testing.assert_allclose(r[:, 0].mean().item(), 20.0, atol=0.003)
    assert torch.all(r[:, 2] == 0.5)  # extra columns are not resampled
    from photovaez.features import feature_matrix

    x = r.numpy() @ feature_matrix(spec)
    np.testing.assert_allclose(x[:, 2], r[:, 0] - r[:, 1], rtol=1e-6)  # colour of the resampled mags
    assert np.std(x[:, 2]) == pytest.approx(np.hypot(0.05, 0.15), rel=0.03)


def test_training_requires_labels(dc2_tables):
    data, fmap = _data(dc2_tables, n_lab=0)
    with pytest.raises(ValueError, match="labelled"):
        train_sdgm(data, fmap, SMALL, _cfg())
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epoch": 3})


def test_interrupted_training_resumes_to_the_same_model(dc2_tables, tmp_path, monkeypatch):
    """Kill training right after the checkpoint of epoch 3 of 6; a second call with the same
    settings resumes from it and ends bit-identical to an uninterrupted run (weights, history,
    skip counters), and the checkpoint is removed at the end."""
    import photovaez.train as train_mod

    data, fmap = _data(dc2_tables)
    # patience 1 with min_epochs 1 could stop early; keep all 6 epochs so the resume has work to do
    cfg = dict(epochs=6, min_epochs=6, patience=10, grad_skip_warmup=5, grad_skip_factor=3.0)
    ref, ref_report = train_sdgm(data, fmap, SMALL, _cfg(**cfg))

    ckpt = tmp_path / "ckpt" / "train.pt"
    saved = []
    real_save = train_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        saved.append(state["epoch"])
        if state["epoch"] == 3:
            raise KeyboardInterrupt  # the job is killed after the epoch-3 checkpoint is on disk

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sdgm(data, fmap, SMALL, _cfg(**cfg, checkpoint_path=str(ckpt)))
    assert saved == [1, 2, 3] and ckpt.exists()
    saved_again = []
    monkeypatch.setattr(train_mod, "save_checkpoint", lambda p, st: (real_save(p, st), saved_again.append(st["epoch"])))

    resumed, report = train_sdgm(data, fmap, SMALL, _cfg(**cfg, checkpoint_path=str(ckpt)))
    assert saved_again == [4, 5]  # it went on from epoch 3 (a fresh start would save 1..5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert report["history"] == ref_report["history"] and len(report["history"]["train_loss"]) == 6
    for key in ("n_steps", "n_skipped", "best_epoch", "best_val_loss", "epochs_run"):
        assert report[key] == ref_report[key], key
    assert not ckpt.exists()  # completed: the next run starts afresh


def test_training_state_round_trips_through_its_state_dict(dc2_tables):
    """An epoch run from a state rebuilt by load_state_dict (after a torch.save / torch.load trip,
    as a checkpoint makes) gives the same weights, counters and generator state as one run from
    the original state: the state dict holds all that an epoch depends on, random numbers included."""
    import io

    data, fmap = _data(dc2_tables)
    cfg = _cfg(grad_skip_warmup=2)
    device = torch.device("cpu")
    arrays, features = TensorArrays.of(data, device), AffineFeatures.of(fmap, device)
    state = TrainingState.create(SMALL, cfg, data, device)
    state.end_epoch(train_epoch(state, arrays, features, 1.5, cfg), 1.0)
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    state.end_epoch(train_epoch(state, arrays, features, 1.5, cfg), 0.5)

    other = TrainingState.create(SMALL, _cfg(seed=99), data, device)  # other seed: all of it is overwritten
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.epoch == 1
    other.end_epoch(train_epoch(other, arrays, features, 1.5, cfg), 0.5)
    for k, v in state.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v), k
    assert other.history == state.history and other.epoch == state.epoch == 2
    assert other.skipper.state_dict() == state.skipper.state_dict()
    assert torch.equal(other.generator.get_state(), state.generator.get_state())
    assert other.best.epoch == state.best.epoch == 1 and other.best.score == 0.5


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "train.pt")
    save_checkpoint(path, {"key": "k", "epoch": 1})

    def torch_save_dies_halfway(obj, fh):
        fh.write(b"PK half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torch_save_dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"key": "k", "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path, "k")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["train.pt"]


def test_checkpoint_of_other_settings_or_damaged_is_refused(dc2_tables, tmp_path, monkeypatch):
    import photovaez.train as train_mod

    data, fmap = _data(dc2_tables)
    ckpt = tmp_path / "train.pt"
    real_save = train_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sdgm(data, fmap, SMALL, _cfg(epochs=4, checkpoint_path=str(ckpt)))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    # other settings (learning rate) or other data: a clear error, not a silently mixed model
    with pytest.raises(ValueError, match="other training data or settings"):
        train_sdgm(data, fmap, SMALL, _cfg(epochs=4, learning_rate=5e-4, checkpoint_path=str(ckpt)))
    other = TrainingArrays(data.values + 0.01, data.errors, data.z, data.labelled)
    with pytest.raises(ValueError, match="other training data or settings"):
        train_sdgm(other, fmap, SMALL, _cfg(epochs=4, checkpoint_path=str(ckpt)))
    # a truncated file
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable PhotoVAEz checkpoint"):
        train_sdgm(data, fmap, SMALL, _cfg(epochs=4, checkpoint_path=str(ckpt)))
    # a torch file that is not a checkpoint
    torch.save({"weights": torch.zeros(3)}, str(ckpt))
    with pytest.raises(ValueError, match="not a PhotoVAEz checkpoint"):
        train_sdgm(data, fmap, SMALL, _cfg(epochs=4, checkpoint_path=str(ckpt)))


def test_device_auto_picks_one_gpu_per_mpi_rank(monkeypatch):
    from photovaez.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", rank=3) == torch.device("cpu")  # no GPU: the CPU, whatever the rank
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(resolve_device("auto", rank=r)) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert str(resolve_device("auto")) == "cuda:0"
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "5")  # mpirun's rank, when none is passed
    assert str(resolve_device("auto")) == "cuda:1"
    assert str(resolve_device("cpu", rank=1)) == "cpu" and str(resolve_device("cuda:0", rank=1)) == "cuda:0"


def test_estimator_stage_uses_its_rank_for_the_device(monkeypatch):
    """Under ceci --mpi the stage's comm gives the rank; each rank takes GPU rank % n_gpus (of
    JAX's GPUs: the estimation runs in JAX)."""
    import jax

    from rail.estimation.algos.photovaez import PhotoVAEzEstimator

    class FakeComm:  # what ceci passes: an object with Get_rank / Get_size
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

    class FakeGPU:
        platform = "gpu"

        def __init__(self, k):
            self.id = k

    real_devices = jax.devices
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda backend=None: [FakeGPU(k) for k in range(4)]
                        if backend in (None, "gpu") else real_devices(backend))
    devices = [PhotoVAEzEstimator.make_stage(name=f"dev_rank{r}", comm=FakeComm(r, 6))._device() for r in range(6)]
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    one = PhotoVAEzEstimator.make_stage(name="dev_cpu", device="cpu")._device()
    assert one == "cpu"
