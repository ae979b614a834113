"""Training the SDGM: Adam with a warm-up + cosine schedule, gradient skipping, photometric-error
resampling, a validation split with early stopping, and seeded reproducibility.

The data arrive as raw catalogue values ``v = [mags, extras]`` with their errors; features are the
affine map ``x = v @ W + c`` (:func:`photovaez.features.affine_map`).  Each time a galaxy is drawn
its magnitudes are resampled, ``m' = m + resample_scale * sigma_m * eps``, and the features
(colours included) are recomputed from the resampled magnitudes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .io import atomic_write
from .loss import alpha_weight, batch_loss
from .model import SDGM

__all__ = ["TrainConfig", "TrainingArrays", "TensorArrays", "AffineFeatures", "GradientSkipper", "BestModel",
           "TrainingState", "resample_values", "resolve_device", "train_epoch", "validation_loss", "train_sdgm",
           "validation_split", "checkpoint_key", "save_checkpoint", "load_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class TrainingArrays:
    """Training set as arrays: raw values ``v`` (N, B+E), their errors (N, B+E; zero for extras),
    redshifts (N,; NaN where unlabelled), the labelled mask (N,) and the decoder's columns (N, k)
    of the observation rows (:func:`photovaez.observations.decoder_columns`; k = 0 for the mlp
    decoder with the lognormal prior)."""

    values: np.ndarray
    errors: np.ndarray
    z: np.ndarray
    labelled: np.ndarray
    decoder_columns: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labelled = np.asarray(self.labelled, bool)
        if self.decoder_columns is None:
            self.decoder_columns = np.zeros((len(self.z), 0))
        if len(self.decoder_columns) != len(self.z) or not np.all(np.isfinite(self.decoder_columns)):
            raise ValueError("TrainingArrays: decoder_columns must have one finite row per galaxy")
        if not np.all(np.isfinite(self.z[self.labelled]) & (self.z[self.labelled] > 0)):
            raise ValueError("TrainingArrays: labelled redshifts must be finite and > 0")

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, idx: np.ndarray) -> TrainingArrays:
        return TrainingArrays(self.values[idx], self.errors[idx], self.z[idx], self.labelled[idx],
                              self.decoder_columns[idx])


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


@dataclass(frozen=True)
class TensorArrays:
    """:class:`TrainingArrays` as float32 tensors on the training device.

    Attributes
    ----------
    values, errors
        Raw values and their errors (N, B+E).
    z
        Redshifts (N,); 1.0 where unlabelled (a placeholder the loss never reads).
    labelled
        Boolean mask (N,).
    decoder_columns
        The decoder's columns of the observation rows (N, k), never resampled.
    """

    values: torch.Tensor
    errors: torch.Tensor
    z: torch.Tensor
    labelled: torch.Tensor
    decoder_columns: torch.Tensor

    @classmethod
    def of(cls, data: TrainingArrays, device: torch.device) -> TensorArrays:
        """Copy ``data`` to ``device``."""
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.as_tensor(data.values, **f32), torch.as_tensor(data.errors, **f32),
                   torch.as_tensor(np.where(data.labelled, data.z, 1.0), **f32),
                   torch.as_tensor(data.labelled, device=device), torch.as_tensor(data.decoder_columns, **f32))

    def __len__(self) -> int:
        return len(self.z)

    def observations(self, features: AffineFeatures, values: torch.Tensor, idx: Any = slice(None)) -> torch.Tensor:
        """Observation rows ``[x | decoder columns]`` of rows ``idx``, x = ``features(values)``."""
        x = features(values)
        if self.decoder_columns.shape[1] == 0:
            return x
        return torch.cat([x, self.decoder_columns[idx]], dim=-1)


@dataclass(frozen=True)
class AffineFeatures:
    """The feature map ``x = v @ W + c`` (:func:`photovaez.features.affine_map`) on the device."""

    W: torch.Tensor
    c: torch.Tensor

    @classmethod
    def of(cls, feature_map: tuple[np.ndarray, np.ndarray], device: torch.device) -> AffineFeatures:
        """``(W, c)`` as float32 tensors on ``device``."""
        W, c = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in feature_map)
        return cls(W, c)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return values @ self.W + self.c


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


def resample_values(values: torch.Tensor, errors: torch.Tensor, scale: float,
                    generator: torch.Generator) -> torch.Tensor:
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
# checkpoints: the whole TrainingState, so that a resumed run ends where an uninterrupted one does

CHECKPOINT_FORMAT = "photovaez-checkpoint-1"
_NOT_IN_KEY = ("progress", "device", "checkpoint_path", "checkpoint_every", "calibrate")


def checkpoint_key(data: TrainingArrays, feature_map: tuple[np.ndarray, np.ndarray], model_config: ModelConfig,
                   config: TrainConfig) -> str:
    """A digest of everything a checkpoint must agree with to be resumed: the training data, the
    feature map, the network settings and the training settings that change the result."""
    import hashlib
    import json

    h = hashlib.sha256(CHECKPOINT_FORMAT.encode())
    for a in (data.values, data.errors, data.z, data.labelled, data.decoder_columns, *feature_map):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
    h.update(json.dumps([model_config.to_dict(), settings], sort_keys=True, default=str).encode())
    return h.hexdigest()


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """Write a training checkpoint atomically (:func:`photovaez.io.atomic_write`): an interruption
    leaves the previous checkpoint or the new one, never half.

    Parameters
    ----------
    path
        The checkpoint file.
    state
        :meth:`TrainingState.state_dict` plus the ``key`` of :func:`checkpoint_key`; the format
        tag is added here.
    """
    with atomic_write(path) as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)


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


# ------------------------------------------------------------------------------------------------
# the training state and the steps that advance it

_SCHEDULER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


class BestModel(NamedTuple):
    """The best epoch so far, for early stopping.

    Attributes
    ----------
    score
        Its validation loss (its training loss when there is no validation set).
    epoch
        Its index, from 0 (-1: none yet).
    weights
        A copy of the model's ``state_dict`` after it (None: none yet).
    """

    score: float = math.inf
    epoch: int = -1
    weights: dict[str, torch.Tensor] | None = None


def _empty_history() -> dict[str, list[float]]:
    return {"train_loss": [], "val_loss": [], "lr": []}


@dataclass
class TrainingState:
    """Everything a training run carries from one epoch to the next.

    :meth:`state_dict` and :meth:`load_state_dict` hold all of it, random-number states included,
    so that a run resumed from a checkpoint ends bit-identical to an uninterrupted one.

    Attributes
    ----------
    model
        The network being trained, on ``device``.
    optimizer
        Adam over the model's parameters.
    scheduler
        The warm-up + cosine learning-rate schedule, advanced once per step (skipped or not).
    generator
        The CPU generator of the batch order and the photometric resampling.
    skipper
        Gradient skipping and its counters.
    device
        Where the model and the data live (not part of the state dict).
    history
        Per-epoch ``train_loss``, ``val_loss`` and ``lr``.
    best
        The best epoch so far.
    epoch
        Epochs completed.
    """

    model: SDGM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    skipper: GradientSkipper
    device: torch.device
    history: dict[str, list[float]] = field(default_factory=_empty_history)
    best: BestModel = field(default_factory=BestModel)
    epoch: int = 0

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, train: TrainingArrays,
               device: torch.device, sed_basis: Any = None) -> TrainingState:
        """The state before the first epoch, every random number seeded by ``config.seed``.

        Parameters
        ----------
        model_config, config
            Network and training settings.
        train
            The training rows (they set the redshift scale, the bpz prior's start and the steps
            per epoch).
        device
            Where to train.
        sed_basis
            The sed decoder's tables (:func:`photovaez.sed_decoder.sed_basis`).
        """
        torch.manual_seed(config.seed)
        model = SDGM(model_config, sed_basis)
        logz = np.log(train.z[train.labelled])
        model.set_redshift_scale(float(logz.mean()), float(max(logz.std(), 0.05)))
        if model_config.prior == "bpz":  # start p(z | m) at the labels' maximum-likelihood fit
            m_ref = train.decoder_columns[train.labelled, -1]
            nll = model.p_z_given_m.init_from_labels(train.z[train.labelled], m_ref)
            log.info("bpz prior p(z | m) initialised on %d labels: mean -log p = %.3f", len(m_ref), nll)
        model.to(device)
        steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = _lr_lambda(config.epochs * steps_per_epoch, config.lr_warmup_epochs * steps_per_epoch,
                              config.lr_final_fraction)
        return cls(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                   torch.Generator(device="cpu").manual_seed(config.seed),
                   GradientSkipper(config.grad_skip_threshold, config.grad_skip_factor, config.grad_skip_warmup),
                   device)

    def state_dict(self) -> dict[str, Any]:
        """The whole state as tensors and plain containers (for :func:`save_checkpoint`); the
        global torch (and CUDA) random-number states are included."""
        cuda = self.device.type == "cuda"
        return {
            "epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
            "skipper": self.skipper.state_dict(), "history": self.history, "best_score": self.best.score,
            "best_epoch": self.best.epoch, "best_state": self.best.weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (e.g. :func:`load_checkpoint`'s), random-number states included."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.skipper.load_state_dict(state["skipper"])
        self.history = state["history"]
        self.best = BestModel(state["best_score"], state["best_epoch"], state["best_state"])
        self.epoch = int(state["epoch"])

    def step(self, loss: torch.Tensor) -> bool:
        """One optimiser step on ``loss``, unless :attr:`skipper` rejects its gradient norm (or the
        loss is not finite); the schedule advances either way.  True if the update was applied."""
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
        else:
            norm = math.nan
        accepted = self.skipper.accept(norm)
        if accepted:
            self.optimizer.step()
        with warnings.catch_warnings():  # the schedule advances on skipped steps too, by design
            warnings.filterwarnings("ignore", message=_SCHEDULER_WARNING)
            self.scheduler.step()
        return accepted

    def end_epoch(self, train_loss: float, val_loss: float) -> None:
        """Record a finished epoch: its losses and last learning rate, and its weights if best."""
        self.history["train_loss"].append(train_loss)
        self.history["val_loss"].append(val_loss)
        self.history["lr"].append(float(self.scheduler.get_last_lr()[0]))
        score = val_loss if math.isfinite(val_loss) else train_loss
        if score < self.best.score:
            self.best = BestModel(score, self.epoch, copy.deepcopy(self.model.state_dict()))
        self.epoch += 1

    def should_stop(self, config: TrainConfig) -> bool:
        """Early stopping: ``config.patience`` epochs without a better score, after ``config.min_epochs``."""
        return self.epoch >= config.min_epochs and self.epoch - 1 - self.best.epoch >= config.patience

    def checkpoint_due(self, config: TrainConfig) -> bool:
        """A checkpoint is written every ``config.checkpoint_every`` epochs, but not after the last."""
        return bool(config.checkpoint_path) and self.epoch % config.checkpoint_every == 0 and self.epoch < config.epochs

    def best_model(self) -> SDGM:
        """The model with the best weights restored, on the CPU, in eval mode."""
        if self.best.weights is not None:
            self.model.load_state_dict(self.best.weights)
        return self.model.to("cpu").eval()


def train_epoch(state: TrainingState, data: TensorArrays, features: AffineFeatures, alpha: float,
                config: TrainConfig) -> float:
    """One pass over the training rows in a random order (mini-batches, resampled photometry).

    Parameters
    ----------
    state
        Advanced in place: weights, optimiser, schedule, generator, skip counters.
    data
        The training rows on the device.
    features
        The feature map.
    alpha
        :func:`photovaez.loss.alpha_weight` of the training rows.
    config
        Batch size, resampling and Monte-Carlo settings.

    Returns
    -------
    float
        The mean loss per galaxy over the applied (not skipped) steps.
    """
    state.model.train()
    perm = torch.randperm(len(data), generator=state.generator).to(state.device)
    total, n = 0.0, 0
    for s in range(0, len(data), config.batch_size):
        idx = perm[s : s + config.batch_size]
        v = data.values[idx]
        if config.resample:
            v = resample_values(v, data.errors[idx], config.resample_scale, state.generator)
        loss, _ = batch_loss(state.model, data.observations(features, v, idx), data.z[idx], data.labelled[idx],
                             alpha, config.n_mc_train)
        loss = loss + state.model.regulariser() / len(data)  # the global prior, once per pass over the data
        if state.step(loss):
            total += float(loss.detach()) * len(idx)
            n += len(idx)
    return total / max(n, 1)


def validation_loss(model: SDGM, data: TensorArrays, features: AffineFeatures, alpha: float, seed: int,
                    n_samples: int = 4, chunk: int = 4096) -> float:
    """The loss per galaxy on held-out rows, with its own seeded draws (the global random-number
    state is left as it was); NaN when there are none.

    Parameters
    ----------
    model
        The network (its mode is left as it is).
    data
        The validation rows on the device.
    features
        The feature map.
    alpha
        :func:`photovaez.loss.alpha_weight` of the training rows.
    seed
        Seeds the Monte-Carlo draws, the same every epoch.
    n_samples
        Monte-Carlo samples per galaxy.
    chunk
        Rows per forward pass.
    """
    if len(data) == 0:
        return math.nan
    device = data.values.device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        total = 0.0
        for s in range(0, len(data), chunk):
            sl = slice(s, s + chunk)
            loss, _ = batch_loss(model, data.observations(features, data.values[sl], sl), data.z[sl],
                                 data.labelled[sl], alpha, n_samples)
            total += float(loss) * (min(s + chunk, len(data)) - s)
    return total / len(data)


def _epoch_bar(start: int, config: TrainConfig) -> Iterable[int]:
    """The remaining epoch indices, behind a tqdm bar if ``config.progress`` and tqdm is there."""
    epochs = range(start, config.epochs)
    if not config.progress:
        return epochs
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return epochs
    return tqdm(epochs, desc="PhotoVAEz training", initial=start, total=config.epochs)


def _report(state: TrainingState, train: TrainingArrays, val_idx: np.ndarray, alpha: float,
            t0: float) -> dict[str, Any]:
    """The report of :func:`train_sdgm`, logged."""
    skipper = state.skipper
    if skipper.skipped_fraction > 1e-4:
        log.warning("gradient skipping: %d of %d steps skipped (%.4f %%), above the 0.01 %% aim",
                    skipper.n_skipped, skipper.n_steps, 100 * skipper.skipped_fraction)
    report = {
        "history": state.history,
        "best_epoch": int(state.best.epoch + 1),
        "best_val_loss": float(state.best.score),
        "epochs_run": state.epoch,
        "n_steps": skipper.n_steps,
        "n_skipped": skipper.n_skipped,
        "n_nonfinite": skipper.n_nonfinite,
        "skipped_fraction": skipper.skipped_fraction,
        "n_labelled": int(train.labelled.sum()),
        "n_unlabelled": int((~train.labelled).sum()),
        "n_validation": len(val_idx),
        "validation_index": val_idx,
        "alpha": alpha,
        "device": str(state.device),
        "wall_time_s": time.perf_counter() - t0,
    }
    log.info("trained %d epochs in %.1f s (best %d, val loss %.4f, %d/%d steps skipped)", state.epoch,
             report["wall_time_s"], report["best_epoch"], state.best.score, skipper.n_skipped, skipper.n_steps)
    return report


def train_sdgm(
    data: TrainingArrays,
    feature_map: tuple[np.ndarray, np.ndarray],
    model_config: ModelConfig,
    config: TrainConfig,
    sed_basis: Any = None,
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
    sed_basis
        The sed decoder's tables (:func:`photovaez.sed_decoder.sed_basis`); needed when
        ``model_config.decoder == "sed"``.

    Returns
    -------
    model
        The trained network with the best validation loss, on the CPU, in eval mode.
    report
        Training history and counters: per-epoch ``train_loss`` / ``val_loss``, ``best_epoch``,
        ``n_steps``, ``n_skipped``, ``skipped_fraction``, ``alpha``, ``validation_index`` (the
        held-out rows of ``data``), ``wall_time_s``, ...
    """
    t0 = time.perf_counter()
    if data.labelled.sum() == 0:
        raise ValueError("training needs at least one labelled galaxy (a finite redshift > 0)")
    device = resolve_device(config.device)
    train_idx, val_idx = validation_split(data, config.validation_fraction, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    alpha = alpha_weight(int(train.labelled.sum()), int((~train.labelled).sum()))
    state = TrainingState.create(model_config, config, train, device, sed_basis)
    features = AffineFeatures.of(feature_map, device)
    train_t, val_t = TensorArrays.of(train, device), TensorArrays.of(val, device)

    key = checkpoint_key(data, feature_map, model_config, config) if config.checkpoint_path else ""
    saved = load_checkpoint(config.checkpoint_path, key) if config.checkpoint_path else None
    if saved is not None:
        state.load_state_dict(saved)
        log.info("resuming training from %s after epoch %d", config.checkpoint_path, state.epoch)
    bar = _epoch_bar(state.epoch, config)
    for _ in bar:
        train_loss = train_epoch(state, train_t, features, alpha, config)
        val_loss = validation_loss(state.model, val_t, features, alpha, config.seed + 1)
        state.end_epoch(train_loss, val_loss)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", best=state.best.epoch)
        if state.should_stop(config):
            log.info("early stopping at epoch %d (best %d)", state.epoch, state.best.epoch + 1)
            break
        if state.checkpoint_due(config):
            save_checkpoint(config.checkpoint_path, {"key": key, **state.state_dict()})
    if config.checkpoint_path and os.path.exists(config.checkpoint_path):
        os.remove(config.checkpoint_path)  # training completed: a later run starts afresh
    return state.best_model(), _report(state, train, val_idx, alpha, t0)
