"""Training the SDGM: Adam with a warm-up + cosine schedule, gradient skipping, photometric-error
resampling, a validation split with early stopping, and seeded reproducibility.

The data arrive as raw catalogue values ``v = [mags, extras]`` with their errors; features are the
affine map ``x = v @ W + c`` (:func:`photovaez.features.affine_map`).  Each time a galaxy is drawn
its magnitudes are resampled, ``m' = m + resample_scale * sigma_m * eps``, and the features
(colours included) are recomputed from the resampled magnitudes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .distributed import DistContext
from .io import atomic_write
from .loss import alpha_weight, batch_loss
from .model import SDGM
from .streaming import LabelSummary, TrainingStream

__all__ = ["TrainConfig", "TrainingArrays", "TensorArrays", "AffineFeatures", "GradientSkipper", "BestModel",
           "TrainingState", "resample_values", "resolve_device", "hidden_precision", "train_epoch", "validation_loss",
           "train_sdgm",
           "validation_split", "checkpoint_key", "save_checkpoint", "load_checkpoint", "StreamData"]

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
    def of(cls, data: Any, device: torch.device) -> TensorArrays:
        """Copy ``data`` (a :class:`TrainingArrays` or a :class:`photovaez.streaming.RowBlock`) to ``device``."""
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.as_tensor(data.values, **f32), torch.as_tensor(data.errors, **f32),
                   torch.as_tensor(np.where(data.labelled, data.z, 1.0), **f32),
                   torch.as_tensor(data.labelled, device=device), torch.as_tensor(data.decoder_columns, **f32))

    def __len__(self) -> int:
        return len(self.z)

    def take(self, idx: Any) -> TensorArrays:
        """The rows ``idx``."""
        return TensorArrays(self.values[idx], self.errors[idx], self.z[idx], self.labelled[idx],
                            self.decoder_columns[idx])

    def epoch_parts(self, state: TrainingState, batch_size: int) -> Iterator[tuple[TensorArrays, Any, int, int]]:
        """This process's parts of one epoch's mini-batches: ``(rows, idx, n_global, offset)``.

        The batches are consecutive ``batch_size`` slices of a random permutation drawn from
        ``state.generator`` (the same on every process); with W processes, process r takes the
        r-th of W near-equal consecutive slices of each batch, ``offset`` rows into it.
        """
        perm = torch.randperm(len(self), generator=state.generator).to(self.z.device)
        rank, world = state.dist.rank, state.dist.world_size
        for s in range(0, len(self), batch_size):
            idx = perm[s : s + batch_size]
            n = len(idx)
            if world == 1:
                yield self, idx, n, 0
                continue
            sizes = [n // world + (r < n % world) for r in range(world)]
            offset = sum(sizes[:rank])
            yield self, idx[offset : offset + sizes[rank]], n, offset

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


class StreamData:
    """A :class:`photovaez.streaming.TrainingStream` as :func:`train_epoch` reads it: each epoch's
    batch parts of this process (:meth:`~photovaez.streaming.TrainingStream.epoch_parts`), copied
    to the device one part at a time."""

    def __init__(self, stream: TrainingStream, device: torch.device):
        self.stream, self.device = stream, device

    def __len__(self) -> int:
        return len(self.stream)

    def epoch_parts(self, state: TrainingState, batch_size: int) -> Iterator[tuple[TensorArrays, Any, int, int]]:
        for part in self.stream.epoch_parts(state.epoch, batch_size, state.dist.rank, state.dist.world_size):
            yield TensorArrays.of(part.rows, self.device), slice(None), part.n_global, part.offset


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
                    generator: torch.Generator, n_global: int | None = None, offset: int = 0) -> torch.Tensor:
    """Photometric-error resampling: ``v' = v + scale * sigma * eps``, eps ~ N(0, 1) per entry.

    Extra columns have zero error and stay put.  Features computed from ``v'`` with the affine map
    (colours included) are then those of the resampled magnitudes.  With ``n_global``, ``eps`` is
    drawn for the ``n_global`` rows of a global batch and rows ``offset ...`` of it are used (this
    process's part of a data-parallel batch)."""
    if n_global is None:
        eps = torch.randn(values.shape, generator=generator)
    else:
        eps = torch.randn((n_global, values.shape[1]), generator=generator)[offset : offset + len(values)]
    return values + scale * errors * eps.to(values.device)


def hidden_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the networks' hidden layers in training for ``TrainConfig.precision``
    (None = float32): ``auto`` is bfloat16 where it is fast, a CPU with native bf16 matrix products
    (AVX512-BF16 or AMX: 5x the float32 rate on a Zen 4 core) or a CUDA GPU with bf16, else float32."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if device.type == "cpu" and any(f() for f in native) else None


@contextlib.contextmanager
def _hidden_precision(model: SDGM, dtype: torch.dtype | None) -> Iterator[None]:
    """The model's hidden layers in ``dtype`` inside the block (:meth:`SDGM.set_hidden_precision`),
    float32 again after it (calibration and the export see float32)."""
    model.set_hidden_precision(dtype)
    try:
        yield
    finally:
        model.set_hidden_precision(None)


def _adam(parameters: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Adam:
    """Adam with one fused kernel for all the parameters (torch >= 2.4 on CPUs), else one kernel
    per operation over all of them (``foreach``): the same update, fewer passes than per tensor."""
    parameters = list(parameters)
    kw = dict(lr=config.learning_rate, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(parameters, fused=True, **kw)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch: no fused CPU Adam
        return torch.optim.Adam(parameters, foreach=True, **kw)


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


def checkpoint_key(data: TrainingArrays | TrainingStream, feature_map: tuple[np.ndarray, np.ndarray],
                   model_config: ModelConfig, config: TrainConfig) -> str:
    """A digest of everything a checkpoint must agree with to be resumed: the training data (for a
    stream, its files' paths, sizes, modification times and the stream settings), the feature map,
    the network settings and the training settings that change the result."""
    import hashlib
    import json

    h = hashlib.sha256(CHECKPOINT_FORMAT.encode())
    if isinstance(data, TrainingStream):
        h.update(data.fingerprint.encode())
        arrays: tuple[np.ndarray, ...] = tuple(feature_map)
    else:
        arrays = (data.values, data.errors, data.z, data.labelled, data.decoder_columns, *feature_map)
    for a in arrays:
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


def label_summary(train: TrainingArrays | TrainingStream) -> LabelSummary:
    """The :class:`photovaez.streaming.LabelSummary` of training rows in memory or of a stream."""
    if isinstance(train, TrainingStream):
        return train.label_summary()
    lab = train.labelled
    logz = np.log(train.z[lab])
    m_ref = train.decoder_columns[lab, -1] if train.decoder_columns.shape[1] else np.zeros(int(lab.sum()))
    return LabelSummary(float(logz.mean()), float(max(logz.std(), 0.05)), train.z[lab], m_ref, len(train))


class _Objective(torch.nn.Module):
    """The training objective as a module, so that ``DistributedDataParallel`` runs it in its
    ``forward`` (it all-reduces the gradients of what its forward computed)."""

    def __init__(self, model: SDGM):
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor, z: torch.Tensor, labelled: torch.Tensor, alpha: float, n_mc: int,
                noise: dict[str, torch.Tensor] | None, scale: float, n_train: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return _objective(self.model, obs, z, labelled, alpha, n_mc, noise, scale, n_train)


def _objective(model: SDGM, obs: torch.Tensor, z: torch.Tensor, labelled: torch.Tensor, alpha: float, n_mc: int,
               noise: dict[str, torch.Tensor] | None, scale: float, n_train: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to differentiate, the loss per galaxy to report): the batch mean of
    :func:`photovaez.loss.batch_loss` plus the global regulariser / N_train; the first has the
    batch term scaled by ``scale`` (W n_r / n in a data-parallel run, 1 otherwise)."""
    loss, _ = batch_loss(model, obs, z, labelled, alpha, n_mc, noise)
    reported = loss + model.regulariser() / n_train  # the global prior, once per pass over the data
    if scale == 1.0:
        return reported, reported
    return loss * scale + model.regulariser() / n_train, reported


def _global_noise(config: ModelConfig, n_mc: int, n_global: int, offset: int, n: int, generator: torch.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Standard-normal draws of the loss's b, a and z for a whole global batch (from the shared
    generator), this process's rows ``offset ... offset + n`` of them."""
    shapes = {"b": (n_mc, n_global, config.dim_b), "a": (n_mc, n_global, config.dim_a), "z": (n_mc, n_global)}
    return {k: torch.randn(shape, generator=generator)[:, offset : offset + n].to(device)
            for k, shape in shapes.items()}


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
    dist: DistContext = field(default_factory=DistContext)
    objective: Any = None

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, train: TrainingArrays | TrainingStream,
               device: torch.device, sed_basis: Any = None, dist: DistContext | None = None) -> TrainingState:
        """The state before the first epoch, every random number seeded by ``config.seed``.

        Parameters
        ----------
        model_config, config
            Network and training settings.
        train
            The training rows, in memory or streamed (they set the redshift scale, the bpz
            prior's start and the steps per epoch).
        device
            Where to train.
        sed_basis
            The sed decoder's tables (:func:`photovaez.sed_decoder.sed_basis`).
        dist
            The data-parallel context (default: one process); with ``world_size > 1`` the
            objective is wrapped in ``DistributedDataParallel``.
        """
        dist = dist or DistContext()
        torch.manual_seed(config.seed)
        model = SDGM(model_config, sed_basis)
        labels = label_summary(train)
        model.set_redshift_scale(labels.logz_mean, labels.logz_std)
        if model_config.prior == "bpz":  # start p(z | m) at the labels' maximum-likelihood fit
            nll = model.p_z_given_m.init_from_labels(labels.z, labels.m_ref)
            log.info("bpz prior p(z | m) initialised on %d labels: mean -log p = %.3f", len(labels.z), nll)
        model.to(device)
        objective = None
        if dist.world_size > 1:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # the buffers (redshift scale, the sed decoder's flux tables) are the same on every process
            # and never change: no broadcast at each forward
            params = inspect.signature(DistributedDataParallel).parameters
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                       else {"broadcast_buffers": False})
            objective = DistributedDataParallel(_Objective(model), device_ids=[device.index] if device.type == "cuda"
                                                else None, **no_sync)
        steps_per_epoch = max(1, math.ceil(labels.n_train / config.batch_size))
        optimizer = _adam(model.parameters(), config)
        schedule = _lr_lambda(config.epochs * steps_per_epoch, config.lr_warmup_epochs * steps_per_epoch,
                              config.lr_final_fraction)
        return cls(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                   torch.Generator(device="cpu").manual_seed(config.seed),
                   GradientSkipper(config.grad_skip_threshold, config.grad_skip_factor, config.grad_skip_warmup),
                   device, dist=dist, objective=objective)

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

    def loss(self, obs: torch.Tensor, z: torch.Tensor, labelled: torch.Tensor, alpha: float, n_mc: int,
             noise: dict[str, torch.Tensor] | None, scale: float, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to step on, the loss per galaxy to report) of one batch part; through
        ``DistributedDataParallel`` in a data-parallel run (see :mod:`photovaez.distributed`)."""
        if self.objective is None:
            return _objective(self.model, obs, z, labelled, alpha, n_mc, noise, scale, n_train)
        return self.objective(obs, z, labelled, alpha, n_mc, noise, scale, n_train)

    def step(self, loss: torch.Tensor) -> bool:
        """One optimiser step on ``loss``, unless :attr:`skipper` rejects its gradient norm (or the
        loss is not finite); the schedule advances either way.  True if the update was applied.

        In a data-parallel run every process runs the backward pass (its gradient all-reduce
        needs them all, a non-finite loss included: its gradients then make the norm non-finite)
        and the skip is decided on the largest norm over processes, so all skip together."""
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.dist.world_size > 1:
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
            norm = self.dist.all_reduce_max(norm if math.isfinite(norm) else math.inf)
        elif torch.isfinite(loss):
            loss.backward()
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


def train_epoch(state: TrainingState, data: TensorArrays | StreamData, features: AffineFeatures, alpha: float,
                config: TrainConfig) -> float:
    """One pass over the training rows in a random order (mini-batches, resampled photometry).

    The same loop serves rows in memory and streamed rows, one process or several
    (:mod:`photovaez.distributed`): each step takes this process's part of a global batch.

    Parameters
    ----------
    state
        Advanced in place: weights, optimiser, schedule, generator, skip counters.
    data
        The training rows on the device, or a stream of them (:class:`StreamData`).
    features
        The feature map.
    alpha
        :func:`photovaez.loss.alpha_weight` of the training rows.
    config
        Batch size, resampling and Monte-Carlo settings.

    Returns
    -------
    float
        The mean loss per galaxy over the applied (not skipped) steps (over all processes).
    """
    state.model.train()
    with _hidden_precision(state.model, hidden_precision(config.precision, state.device)):
        return _train_epoch(state, data, features, alpha, config)


def _train_epoch(state: TrainingState, data: TensorArrays | StreamData, features: AffineFeatures, alpha: float,
                 config: TrainConfig) -> float:
    world = state.dist.world_size
    n_train = len(data)
    total, n = 0.0, 0
    for rows, idx, n_global, offset in data.epoch_parts(state, config.batch_size):
        v = rows.values[idx]
        n_part = len(v)
        if config.resample:
            v = resample_values(v, rows.errors[idx], config.resample_scale, state.generator,
                                *((n_global, offset) if world > 1 or n_part != n_global else ()))
        noise = None
        if state.dist.explicit_noise:
            noise = _global_noise(state.model.config, config.n_mc_train, n_global, offset, n_part, state.generator,
                                  state.device)
        scale = world * n_part / n_global if world > 1 else 1.0
        loss, reported = state.loss(rows.observations(features, v, idx), rows.z[idx], rows.labelled[idx], alpha,
                                    config.n_mc_train, noise, scale, n_train)
        if state.step(loss):
            total += float(reported.detach()) * n_part
            n += n_part
    if world > 1:
        total, n = state.dist.all_reduce_sum([total, n])
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


def _shared_validation_loss(state: TrainingState, data: TensorArrays, features: AffineFeatures, alpha: float,
                           seed: int) -> float:
    """:func:`validation_loss`, the same on every process: in a data-parallel run rank 0's value
    is all-reduced to every rank (each computes it on the bounded validation rows, with the same
    draws, so the value is also that of one process)."""
    value = validation_loss(state.model, data, features, alpha, seed)
    if state.dist.world_size == 1:
        return value
    return state.dist.all_reduce_sum([value if state.dist.is_main else 0.0])[0]


def _report(state: TrainingState, n_labelled: int, n_unlabelled: int, val_idx: np.ndarray, alpha: float,
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
        "n_labelled": int(n_labelled),
        "n_unlabelled": int(n_unlabelled),
        "n_validation": len(val_idx),
        "validation_index": val_idx,
        "alpha": alpha,
        "device": str(state.device),
        "world_size": state.dist.world_size,
        "rank": state.dist.rank,
        "wall_time_s": time.perf_counter() - t0,
    }
    log.info("trained %d epochs in %.1f s (best %d, val loss %.4f, %d/%d steps skipped)", state.epoch,
             report["wall_time_s"], report["best_epoch"], state.best.score, skipper.n_skipped, skipper.n_steps)
    return report


def train_sdgm(
    data: TrainingArrays | TrainingStream,
    feature_map: tuple[np.ndarray, np.ndarray],
    model_config: ModelConfig,
    config: TrainConfig,
    sed_basis: Any = None,
    distributed: DistContext | None = None,
) -> tuple[SDGM, dict[str, Any]]:
    """Train an SDGM on labelled + unlabelled galaxies.

    Parameters
    ----------
    data
        Raw values, errors, redshifts and the labelled mask in memory, or a
        :class:`photovaez.streaming.TrainingStream` of files read chunk by chunk (its held-out
        rows are the validation set; memory stays bounded by its chunk size).
    feature_map
        ``(W, c)`` of :func:`photovaez.features.affine_map` (features ``x = v @ W + c``).
    model_config, config
        Network and training settings.
    sed_basis
        The sed decoder's tables (:func:`photovaez.sed_decoder.sed_basis`); needed when
        ``model_config.decoder == "sed"``.
    distributed
        The data-parallel context (:mod:`photovaez.distributed`); default: that of an initialised
        ``torch.distributed`` process group, else one process.  Only rank 0 writes checkpoints.

    Returns
    -------
    model
        The trained network with the best validation loss, on the CPU, in eval mode.
    report
        Training history and counters: per-epoch ``train_loss`` / ``val_loss``, ``best_epoch``,
        ``n_steps``, ``n_skipped``, ``skipped_fraction``, ``alpha``, ``validation_index`` (the
        held-out rows of ``data``; empty for a stream, whose held-out rows are its
        ``validation``), ``wall_time_s``, ...
    """
    t0 = time.perf_counter()
    dist = distributed or DistContext.from_torch()
    device = resolve_device(config.device, rank=dist.local_rank if dist.world_size > 1 else None)
    if isinstance(data, TrainingStream):
        val_idx = np.zeros(0, np.int64)
        train: TrainingArrays | TrainingStream = data
        val = TrainingArrays(*data.validation)
        n_lab, n_unl = data.n_labelled, data.n_unlabelled
        train_t: TensorArrays | StreamData = StreamData(data, device)
    else:
        if data.labelled.sum() == 0:
            raise ValueError("training needs at least one labelled galaxy (a finite redshift > 0)")
        train_idx, val_idx = validation_split(data, config.validation_fraction, config.seed)
        train, val = data.subset(train_idx), data.subset(val_idx)
        n_lab, n_unl = int(train.labelled.sum()), int((~train.labelled).sum())
        train_t = TensorArrays.of(train, device)
    alpha = alpha_weight(n_lab, n_unl)
    state = TrainingState.create(model_config, config, train, device, sed_basis, dist)
    features = AffineFeatures.of(feature_map, device)
    val_t = TensorArrays.of(val, device)

    key = checkpoint_key(data, feature_map, model_config, config) if config.checkpoint_path else ""
    saved = load_checkpoint(config.checkpoint_path, key) if config.checkpoint_path else None
    if saved is not None:
        state.load_state_dict(saved)
        log.info("resuming training from %s after epoch %d", config.checkpoint_path, state.epoch)
    bar = _epoch_bar(state.epoch, config) if dist.is_main else range(state.epoch, config.epochs)
    for _ in bar:
        train_loss = train_epoch(state, train_t, features, alpha, config)
        with _hidden_precision(state.model, hidden_precision(config.precision, state.device)):  # as in training
            val_loss = _shared_validation_loss(state, val_t, features, alpha, config.seed + 1)
        state.end_epoch(train_loss, val_loss)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", best=state.best.epoch)
        if state.should_stop(config):
            log.info("early stopping at epoch %d (best %d)", state.epoch, state.best.epoch + 1)
            break
        if state.checkpoint_due(config) and dist.is_main:
            save_checkpoint(config.checkpoint_path, {"key": key, **state.state_dict()})
    if config.checkpoint_path and os.path.exists(config.checkpoint_path) and dist.is_main:
        os.remove(config.checkpoint_path)  # training completed: a later run starts afresh
    report = _report(state, n_lab, n_unl, val_idx, alpha, t0)
    report["n_validation"] = len(val)
    return state.best_model(), report
