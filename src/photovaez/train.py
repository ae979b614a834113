"""Training the SDGM: Adam with a warm-up + cosine schedule, gradient skipping, photometric-error
resampling, a validation split with early stopping, and seeded reproducibility.

The data arrive as raw catalogue values ``v = [mags, extras]`` with their errors; features are the
affine map ``x = v @ W + c`` (:func:`photovaez.features.affine_map`).  Each time a galaxy is drawn
its magnitudes are resampled, ``m' = m + resample_scale * sigma_m * eps``, and the features
(colours included) are recomputed from the resampled magnitudes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .loss import alpha_weight, batch_loss
from .config import ModelConfig, TrainConfig
from .model import SDGM

__all__ = ["TrainConfig", "TrainingArrays", "GradientSkipper", "resample_values", "resolve_device", "train_sdgm",
           "validation_split", "checkpoint_key", "save_checkpoint", "load_checkpoint"]

log = logging.getLogger("photovaez")


@dataclass
class TrainingArrays:
    """Training set as arrays: raw values ``v`` (N, B+E), their errors (N, B+E; zero for extras),
    redshifts (N,; NaN where unlabelled) and the labelled mask (N,)."""

    values: np.ndarray
    errors: np.ndarray
    z: np.ndarray
    labelled: np.ndarray

    def __post_init__(self) -> None:
        self.labelled = np.asarray(self.labelled, bool)
        if not np.all(np.isfinite(self.z[self.labelled]) & (self.z[self.labelled] > 0)):
            raise ValueError("TrainingArrays: labelled redshifts must be finite and > 0")

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, idx: np.ndarray) -> "TrainingArrays":
        return TrainingArrays(self.values[idx], self.errors[idx], self.z[idx], self.labelled[idx])


def resolve_device(device: str = "auto", rank: int | None = None) -> torch.device:
    """Pick the torch device.  ``"auto"`` takes CUDA when present; under MPI each rank takes GPU
    ``rank % n_gpus`` (rank from ``rank`` or the usual MPI environment variables)."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if rank is None:
        for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
            if var in os.environ:
                rank = int(os.environ[var])
                break
    return torch.device(f"cuda:{(rank or 0) % torch.cuda.device_count()}")


class GradientSkipper:
    """Gradient skipping (Child 2021): decide per step whether to apply the update.

    A step is skipped when its global gradient norm is not finite or exceeds the threshold: the
    fixed ``threshold`` if given, else ``factor`` x the running median of the last ``window``
    accepted norms (no norm-based skipping during the first ``warmup`` steps).
    """

    def __init__(self, threshold: float | None, factor: float = 50.0, warmup: int = 100, window: int = 500):
        self.threshold = threshold if threshold is not None and threshold > 0 else None
        self.factor, self.warmup, self.window = factor, warmup, window
        self.history: list[float] = []
        self.n_steps = 0
        self.n_skipped = 0
        self.n_nonfinite = 0

    def current_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        if len(self.history) < self.warmup:
            return math.inf
        return self.factor * float(np.median(self.history[-self.window :]))

    def accept(self, grad_norm: float) -> bool:
        """Record one step; True if its update should be applied."""
        self.n_steps += 1
        if not math.isfinite(grad_norm):
            self.n_skipped += 1
            self.n_nonfinite += 1
            return False
        if grad_norm > self.current_threshold():
            self.n_skipped += 1
            return False
        self.history.append(grad_norm)
        if len(self.history) > 4 * self.window:
            del self.history[: -self.window]
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (for training checkpoints)."""
        return {"history": list(self.history), "n_steps": self.n_steps, "n_skipped": self.n_skipped,
                "n_nonfinite": self.n_nonfinite}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])
        self.n_steps, self.n_skipped, self.n_nonfinite = state["n_steps"], state["n_skipped"], state["n_nonfinite"]

    @property
    def skipped_fraction(self) -> float:
        return self.n_skipped / max(self.n_steps, 1)


def resample_values(values: torch.Tensor, errors: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Photometric-error resampling: ``v' = v + scale * sigma * eps``, eps ~ N(0, 1) per entry.

    Extra columns have zero error and stay put.  Features computed from ``v'`` with the affine map
    (colours included) are then those of the resampled magnitudes."""
    eps = torch.randn(values.shape, generator=generator).to(values.device)
    return values + scale * errors * eps


def _lr_lambda(total_steps: int, warmup_steps: int, final_fraction: float):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def validation_split(data: TrainingArrays, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): ``fraction`` of the labelled and of the unlabelled galaxies
    are held out (at least one labelled galaxy stays in training); fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for mask in (data.labelled, ~data.labelled):
        idx = rng.permutation(np.flatnonzero(mask))
        n_val = int(round(fraction * len(idx)))
        if mask is data.labelled:
            n_val = min(n_val, max(len(idx) - 1, 0))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


# ------------------------------------------------------------------------------------------------
# checkpoints: the whole training state, so that a resumed run ends where an uninterrupted one does

CHECKPOINT_FORMAT = "photovaez-checkpoint-1"
_NOT_IN_KEY = ("progress", "device", "checkpoint_path", "checkpoint_every", "calibrate")


def checkpoint_key(data: TrainingArrays, feature_map: tuple[np.ndarray, np.ndarray], model_config: ModelConfig,
                   config: TrainConfig) -> str:
    """A digest of everything a checkpoint must agree with to be resumed: the training data, the
    feature map, the network settings and the training settings that change the result."""
    import hashlib
    import json

    h = hashlib.sha256(CHECKPOINT_FORMAT.encode())
    for a in (data.values, data.errors, data.z, data.labelled, *feature_map):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
    h.update(json.dumps([model_config.to_dict(), settings], sort_keys=True, default=str).encode())
    return h.hexdigest()


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """Write a training checkpoint atomically (a temporary file in the same folder, then
    ``os.replace``): an interruption leaves the previous checkpoint or the new one, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, key: str) -> dict[str, Any] | None:
    """The training state in ``path`` (None if there is no file).

    Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, no code.
    A file that is not a readable checkpoint, or one written for other data or settings
    (``key``, see :func:`checkpoint_key`), is an error rather than a silent fresh start.
    """
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a damaged file
        raise ValueError(f"checkpoint_path {path!r} is not a readable PhotoVAEz checkpoint ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); delete it to train "
                         "from the start") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint_path {path!r} is not a PhotoVAEz checkpoint (format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    if state.get("key") != key:
        raise ValueError(f"checkpoint_path {path!r} was written for other training data or settings; delete it "
                         "(or choose another path) to train from the start")
    return state


def train_sdgm(
    data: TrainingArrays,
    feature_map: tuple[np.ndarray, np.ndarray],
    model_config: ModelConfig,
    config: TrainConfig,
) -> tuple[SDGM, dict[str, Any]]:
    """Train an SDGM on labelled + unlabelled galaxies.

    Parameters
    ----------
    data
        Raw values, errors, redshifts and the labelled mask.
    feature_map
        ``(W, c)`` of :func:`photovaez.features.affine_map` (features ``x = v @ W + c``).
    model_config, config
        Network and training settings.

    Returns
    -------
    model
        The trained network with the best validation loss, on the CPU, in eval mode.
    report
        Training history and counters: per-epoch ``train_loss`` / ``val_loss``, ``best_epoch``,
        ``n_steps``, ``n_skipped``, ``skipped_fraction``, ``alpha``, ``wall_time_s``, ...
    """
    t0 = time.perf_counter()
    if data.labelled.sum() == 0:
        raise ValueError("training needs at least one labelled galaxy (a finite redshift > 0)")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    train_idx, val_idx = validation_split(data, config.validation_fraction, config.seed)
    tr, va = data.subset(train_idx), data.subset(val_idx)
    n_s, n_p = int(tr.labelled.sum()), int((~tr.labelled).sum())
    alpha = alpha_weight(n_s, n_p)

    model = SDGM(model_config)
    logz = np.log(tr.z[tr.labelled])
    model.set_redshift_scale(float(logz.mean()), float(max(logz.std(), 0.05)))
    model.to(device)

    f32 = dict(dtype=torch.float32, device=device)
    W, c = (torch.as_tensor(a, **f32) for a in feature_map)

    def tensors(d: TrainingArrays):
        z = np.where(d.labelled, d.z, 1.0)  # placeholder, never used for unlabelled rows
        return (
            torch.as_tensor(d.values, **f32),
            torch.as_tensor(d.errors, **f32),
            torch.as_tensor(z, **f32),
            torch.as_tensor(d.labelled, device=device),
        )

    v_tr, e_tr, z_tr, l_tr = tensors(tr)
    v_va, e_va, z_va, l_va = tensors(va)

    steps_per_epoch = max(1, math.ceil(len(tr) / config.batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        _lr_lambda(config.epochs * steps_per_epoch, config.lr_warmup_epochs * steps_per_epoch, config.lr_final_fraction),
    )
    skipper = GradientSkipper(config.grad_skip_threshold, config.grad_skip_factor, config.grad_skip_warmup)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def val_loss() -> float:
        if len(va) == 0:
            return math.nan
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed + 1)
            total = 0.0
            for s in range(0, len(va), 4096):
                sl = slice(s, s + 4096)
                loss, _ = batch_loss(model, v_va[sl] @ W + c, z_va[sl], l_va[sl], alpha, 4)
                total += float(loss) * (min(s + 4096, len(va)) - s)
        return total / len(va)

    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": []}
    best = (math.inf, -1, None)
    epochs_run = start_epoch = 0
    ckpt_key = checkpoint_key(data, feature_map, model_config, config) if config.checkpoint_path else ""
    state = load_checkpoint(config.checkpoint_path, ckpt_key) if config.checkpoint_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        skipper.load_state_dict(state["skipper"])
        history = state["history"]
        best = (state["best_score"], state["best_epoch"], state["best_state"])
        epochs_run = start_epoch = int(state["epoch"])
        log.info("resuming training from %s after epoch %d", config.checkpoint_path, start_epoch)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    epochs = range(start_epoch, config.epochs)
    bar = tqdm(epochs, desc="PhotoVAEz training", disable=not config.progress, initial=start_epoch,
               total=config.epochs) if tqdm else epochs
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(tr), generator=gen).to(device)
        ep_loss, ep_n = 0.0, 0
        for s in range(0, len(tr), config.batch_size):
            idx = perm[s : s + config.batch_size]
            v = v_tr[idx]
            if config.resample:
                v = resample_values(v, e_tr[idx], config.resample_scale, gen)
            loss, _ = batch_loss(model, v @ W + c, z_tr[idx], l_tr[idx], alpha, config.n_mc_train)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
            else:
                norm = math.nan
            if skipper.accept(norm):
                opt.step()
                ep_loss += float(loss.detach()) * len(idx)
                ep_n += len(idx)
            with warnings.catch_warnings():  # the schedule advances on skipped steps too, by design
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                sched.step()
        epochs_run = epoch + 1
        vl = val_loss()
        history["train_loss"].append(ep_loss / max(ep_n, 1))
        history["val_loss"].append(vl)
        history["lr"].append(float(sched.get_last_lr()[0]))
        score = vl if math.isfinite(vl) else history["train_loss"][-1]
        if score < best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
        if tqdm and config.progress:
            bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{vl:.3f}", best=best[1])
        if epoch + 1 >= config.min_epochs and epoch - best[1] >= config.patience:
            log.info("early stopping at epoch %d (best %d)", epoch + 1, best[1] + 1)
            break
        if config.checkpoint_path and (epoch + 1) % config.checkpoint_every == 0 and epoch + 1 < config.epochs:
            save_checkpoint(config.checkpoint_path, {
                "key": ckpt_key, "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "skipper": skipper.state_dict(), "history": history, "best_score": best[0],
                "best_epoch": best[1], "best_state": best[2],
            })
    if config.checkpoint_path and os.path.exists(config.checkpoint_path):
        os.remove(config.checkpoint_path)  # training completed: a later run starts afresh
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.to("cpu").eval()
    if skipper.skipped_fraction > 1e-4:
        log.warning(
            "gradient skipping: %d of %d steps skipped (%.4f %%), above the 0.01 %% aim",
            skipper.n_skipped, skipper.n_steps, 100 * skipper.skipped_fraction,
        )
    report = {
        "history": history,
        "best_epoch": int(best[1] + 1),
        "best_val_loss": float(best[0]),
        "epochs_run": epochs_run,
        "n_steps": skipper.n_steps,
        "n_skipped": skipper.n_skipped,
        "n_nonfinite": skipper.n_nonfinite,
        "skipped_fraction": skipper.skipped_fraction,
        "n_labelled": n_s,
        "n_unlabelled": n_p,
        "n_validation": int(len(va)),
        "validation_index": val_idx,
        "alpha": alpha,
        "device": str(device),
        "wall_time_s": time.perf_counter() - t0,
    }
    log.info(
        "trained %d epochs in %.1f s (best %d, val loss %.4f, %d/%d steps skipped)",
        epochs_run, report["wall_time_s"], report["best_epoch"], best[0], skipper.n_skipped, skipper.n_steps,
    )
    return model, report
