"""Configuration of PhotoVAEz: every setting declared once, with its default and its meaning.

Each configuration is a dataclass whose fields are made with :func:`option`, which keeps the
help text with the field.  Everything else derives from these declarations: the RAIL stages'
``config_options`` (``rail.estimation.algos.photovaez``), the command line's options (generated
from the stages) and the option tables of ``docs/configuration.md``
(``docs/make_config_doc.py``).  :func:`options` lists the fields a user sets.

* :class:`ModelConfig`: sizes and options of the SDGM networks.
* :class:`TrainConfig`: the training run (schedule, resampling, gradient skipping, early
  stopping, calibration, checkpoints, the redshift range).
* :class:`EstimateConfig`: how PDFs are estimated (amortised q(z|x) or a model-posterior mode
  of :mod:`photovaez.estimation`).

Nothing here imports torch or JAX, so the RAIL stages can declare their options cheaply.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["option", "Option", "options", "Config", "ModelConfig", "TrainConfig", "EstimateConfig", "ACTIVATIONS",
           "DECODERS", "REDSHIFT_PRIORS", "PRECISIONS"]

ACTIVATIONS = ("silu", "tanh", "relu", "gelu")
DECODERS = ("mlp", "sed")
REDSHIFT_PRIORS = ("auto", "lognormal", "bpz")
PRECISIONS = ("auto", "float32", "bfloat16")


def option(default: Any, help: str, *, internal: bool = False) -> Any:
    """A dataclass field with its help text (``metadata["help"]``).

    Parameters
    ----------
    default
        The default value (lists and dicts are copied for every instance).
    help
        One-line meaning of the setting: the stage option's message and the docs' text.
    internal
        Set by the code, not by users (e.g. ``dim_x``, from the feature spec): not an option.
    """
    meta = {"help": help, "internal": internal}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Option(NamedTuple):
    """A user-facing setting: its name, base type (int, float, bool, str, list, dict), default and help."""

    name: str
    type: type
    default: Any
    help: str


def _base_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return origin
    if origin is not None:  # Optional / Union: the non-None member
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    return hint


def options(cls: type) -> list[Option]:
    """The user-facing settings of a configuration dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Option(f.name, _base_type(hints[f.name]), default, f.metadata.get("help", "")))
    return out


class Config:
    """``to_dict`` / ``from_dict`` for configuration dataclasses; unknown keys are errors."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored in the model file)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Build from a dict; a key that is not a field raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(d))


@dataclass
class ModelConfig(Config):
    """Sizes and options of the SDGM networks (:class:`photovaez.model.SDGM`).

    Each conditional is one Gaussian MLP with hidden layers ``hidden`` and a linear output of D
    means plus one shared log-variance (or D with ``per_dim_variance``).
    """

    dim_x: int = option(11, "number of input features D_x (set from the feature spec)", internal=True)
    n_bands: int = option(6, "number of photometric bands (set from the feature spec)", internal=True)
    reference_band_index: int = option(-1, "index of the reference band among the bands (set from prior_band and "
                                       "the feature spec; -1 = none)", internal=True)
    dim_a: int = option(10, "dimension A of the latent variable a")
    dim_b: int = option(10, "dimension B of the auxiliary variable b")
    hidden: list[int] = option([512, 256, 128], "hidden-layer widths of every network")
    activation: str = option("silu", "hidden-layer nonlinearity: silu (smooth, so log p(x, z) is smooth in z for "
                             "HMC), tanh, relu or gelu")
    per_dim_variance: bool = option(False, "one log-variance per output dimension instead of a shared one")
    logvar_min: float = option(-9.0, "soft lower bound of every network's log-variance (numerical safety)")
    logvar_max: float = option(4.0, "soft upper bound of every network's log-variance")
    x_logvar_min: float = option(-7.0, "soft lower bound of the decoder p(x|a,b,z) log-variance (the features are "
                                 "standardised)")
    decoder: str = option("sed", "generative model of the photometry p(x|a,b,z): sed (rest-frame SED templates times "
                          "a learned correction, redshifted through the bands' filter curves; flux-space likelihood "
                          "with the catalogue's errors and a learned intrinsic error; the default, see the "
                          "benchmarks) or mlp (a Gaussian MLP over the standardised features)")
    templates: str = option("cosmos", "sed decoder: the template set: cosmos (RAIL's 31 COSMOS templates), cwwsb4 "
                            "(RAIL's 8 CWW+SB templates), or the path (or 'rail:<path>') of a .list or an SED file")
    filters: list[str] = option([], "sed decoder: one filter curve per band, in the feature spec's band order: a file "
                                "(e.g. RAIL's FILTER/*.res), 'rail:<path inside RAIL>' or a speclite name (sdss2010-r, "
                                "wise2010-W1, lsst2023-i, ...); [] = the curves of the feature preset the bands are "
                                "(lsst, sdss_mgs, sdss_wise)")
    n_correction: int = option(8, "sed decoder: cubic B-splines in rest-frame ln(wavelength) of the smooth SED "
                               "correction (0 = the plain template mixture)")
    correction_max: float = option(0.3, "sed decoder: bound c_max < 1 on each correction coefficient (the corrected "
                                   "SED stays positive)")
    sed_hidden: list[int] = option([64, 64], "sed decoder: hidden widths of the network from the type a to the "
                                   "template weights and the correction")
    sed_uses_b: bool = option(False, "sed decoder: the SED depends on b as well as on a")
    intrinsic_error: float = option(0.05, "sed decoder: initial intrinsic (template) fractional flux error, learned")
    zero_points: bool = option(False, "sed decoder: learn per-band zero-point offsets (L2-regularised by "
                               "zero_point_sigma; reported in magnitudes)")
    zero_point_sigma: float = option(0.05, "sed decoder: width of the Gaussian prior on each zero-point offset "
                                     "(natural-log flux, 0.05 = 0.054 mag)")
    nondetect_sigma: float = option(5.0, "sed decoder: signal-to-noise of the band limits: a non-detection is the "
                                    "flux measurement 0 +- limit flux / nondetect_sigma")
    redshift_prior: str = option("auto", "p(z): lognormal (a trained log-normal), bpz (BPZ's magnitude-dependent "
                                 "p(z | m_ref), trained on labelled and unlabelled galaxies) or auto (bpz with the "
                                 "sed decoder, lognormal with the mlp one)")
    prior_band: str = option("", "the magnitude column m_ref of the bpz prior, also the band whose flux the sed "
                             "decoder's amplitude is; '' = the i band (a column named i, *_i or *_i_*)")

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ModelConfig.activation: {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        for name in ("dim_x", "dim_a", "dim_b"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.logvar_min < self.logvar_max or not self.x_logvar_min < self.logvar_max:
            raise ValueError("ModelConfig: logvar_min and x_logvar_min must be below logvar_max")
        self.sed_hidden = [int(h) for h in self.sed_hidden]
        self.filters = [str(f) for f in self.filters]
        if self.decoder not in DECODERS:
            raise ValueError(f"ModelConfig.decoder: {self.decoder!r} is not one of {list(DECODERS)}")
        if self.redshift_prior not in REDSHIFT_PRIORS:
            raise ValueError(f"ModelConfig.redshift_prior: {self.redshift_prior!r} is not one of "
                             f"{list(REDSHIFT_PRIORS)}")
        if self.n_correction == 1 or self.n_correction < 0:
            raise ValueError(f"ModelConfig.n_correction must be 0 or >= 2, got {self.n_correction}")
        if not 0.0 <= self.correction_max < 1.0:
            raise ValueError(f"ModelConfig.correction_max must be in [0, 1), got {self.correction_max}")
        for name in ("intrinsic_error", "zero_point_sigma", "nondetect_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The ``model_config`` of a model file: :meth:`from_dict`, where files written before the sed
        decoder (format 1, photovaez < 0.2) have no ``decoder`` key and hold mlp models."""
        return cls.from_dict({"decoder": "mlp", **d})

    @property
    def prior(self) -> str:
        """The p(z) in use: ``redshift_prior`` with ``auto`` resolved (bpz for sed, lognormal for mlp)."""
        if self.redshift_prior == "auto":
            return "bpz" if self.decoder == "sed" else "lognormal"
        return self.redshift_prior

    @property
    def n_decoder_columns(self) -> int:
        """Columns the decoder side reads after the D_x features of an observation row
        (:mod:`photovaez.observations`): the fluxes and flux errors of the n_bands bands (sed), then
        m_ref (bpz)."""
        return (2 * self.n_bands if self.decoder == "sed" else 0) + (1 if self.prior == "bpz" else 0)

    @property
    def dim_obs(self) -> int:
        """Width of an observation row: D_x features and :attr:`n_decoder_columns`."""
        return self.dim_x + self.n_decoder_columns


@dataclass
class TrainConfig(Config):
    """Settings of a training run (:func:`photovaez.train.train_sdgm`)."""

    epochs: int = option(300, "maximum number of training epochs (passes over the training set)")
    batch_size: int = option(512, "galaxies per mini-batch (labelled and unlabelled mixed at random)")
    learning_rate: float = option(1e-3, "peak Adam learning rate (after the warm-up)")
    lr_warmup_epochs: int = option(5, "linear learning-rate warm-up epochs, then a cosine decay")
    lr_final_fraction: float = option(0.01, "final learning rate as a fraction of learning_rate")
    weight_decay: float = option(0.0, "Adam weight decay")
    n_mc_train: int = option(1, "Monte-Carlo samples per galaxy in the training loss")
    resample: bool = option(True, "resample magnitudes from their errors each time a galaxy is drawn")
    resample_scale: float = option(0.5, "resampling width in units of the catalogue error (1 = N(m, sigma^2))")
    grad_skip_threshold: float = option(0.0, "skip updates whose global gradient norm exceeds this; <= 0 = adaptive "
                                        "(grad_skip_factor x the running median norm); non-finite steps are "
                                        "always skipped")
    grad_skip_factor: float = option(50.0, "adaptive gradient-skip threshold, in units of the running median norm")
    grad_skip_warmup: int = option(100, "steps before adaptive gradient skipping starts")
    validation_fraction: float = option(0.1, "fraction of the labelled and of the unlabelled galaxies held out for "
                                        "early stopping and calibration")
    patience: int = option(40, "epochs without a better validation loss before stopping (the best weights are "
                           "restored)")
    min_epochs: int = option(20, "epochs before early stopping may stop training")
    seed: int = option(0, "random seed (weights, batches, resampling, validation split)")
    device: str = option("auto", "auto (GPU when available; under MPI rank % n_gpus), cpu, cuda or cuda:k")
    precision: str = option("auto", "the networks' hidden layers in training: bfloat16 (autocast; the output "
                            "layers, fluxes, densities and weights stay float32), float32, or auto = bfloat16 where "
                            "the CPU multiplies bf16 natively (AVX512-BF16 / AMX) or on a GPU with bf16, else "
                            "float32")
    progress: bool = option(True, "show a progress bar while training")
    calibrate: bool = option(True, "fit a temperature for the amortised PDFs on the labelled validation galaxies "
                             "(PIT made uniform on linspace(zmin, zmax)); stored in the model and applied when "
                             "estimating")
    zmin: float = option(0.0, "lower end of the redshift range the model is trained for (the calibration grid; "
                         "recorded in the model)")
    zmax: float = option(3.0, "upper end of the redshift range the model is trained for (the calibration grid; "
                         "labelled redshifts above it are reported)")
    nzbins: int = option(301, "points of the redshift grid linspace(zmin, zmax, nzbins) recorded in the model "
                         "(the calibration uses a finer grid over the same range)")
    checkpoint_path: str = option("", "file for the complete training state, written atomically every "
                                  "checkpoint_every epochs; if it exists, training resumes from it and ends as an "
                                  "uninterrupted run would (CPU, same seed); removed when training completes; "
                                  "'' = no checkpoints")
    checkpoint_every: int = option(1, "epochs between training checkpoints")
    proposal_steps: int = option(40, "Adam steps fitting the importance proposal's temperatures after training "
                                 "(photovaez.proposal: the posterior modes' ESS); 0 = the untempered encoder")
    calibrate_posterior: bool = option(True, "fit a temperature for the snis model posterior on the labelled "
                                       "validation galaxies (the snis and auto modes apply it); costs one snis "
                                       "run on up to 500 galaxies")
    support_k: int = option(8, "neighbour rank of the labelled-support distance stored in the model "
                            "(photovaez.support; the auto mode's extrapolation test)")
    stream_chunk_size: int = option(0, "train from files chunk by chunk (photovaez.streaming; the informer's input "
                                    "and unlabeled given as hdf5/parquet paths, photovaez.api.fit_streaming): rows "
                                    "per read; memory is bounded by about (stream_buffer_chunks + 2) chunks; 0 = read "
                                    "the tables into memory")
    stream_buffer_chunks: int = option(4, "streamed training: chunks in the shuffle buffer that mixes the chunks of "
                                       "both files before batches are cut (more mixes files sorted by redshift "
                                       "better)")
    stream_max_validation: int = option(10000, "streamed training: at most this many rows of each file held out "
                                        "(validation_fraction of its rows, seeded) for early stopping and "
                                        "calibration")
    stream_sample_size: int = option(50000, "streamed training: rows of the seeded samples of the labelled and of "
                                     "all training rows kept for the bpz prior's start, the labelled support and "
                                     "the importance proposal")

    def __post_init__(self) -> None:
        if self.grad_skip_threshold is None:  # model files before 0.2 stored None for "adaptive"
            self.grad_skip_threshold = 0.0
        if self.epochs < 1 or self.batch_size < 1 or self.n_mc_train < 1:
            raise ValueError("TrainConfig: epochs, batch_size and n_mc_train must be >= 1")
        if self.stream_chunk_size < 0:
            raise ValueError(f"TrainConfig.stream_chunk_size must be >= 0 (0 = read the tables into memory), got "
                             f"{self.stream_chunk_size}")
        if self.stream_buffer_chunks < 1 or self.stream_max_validation < 0 or self.stream_sample_size < 0:
            raise ValueError("TrainConfig: stream_buffer_chunks must be >= 1, stream_max_validation and "
                             "stream_sample_size >= 0")
        if self.checkpoint_every < 1:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"TrainConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.zmax > self.zmin or self.nzbins < 2 or self.zmin < 0:
            raise ValueError(f"TrainConfig: invalid redshift range zmin={self.zmin}, zmax={self.zmax}, "
                             f"nzbins={self.nzbins} (need 0 <= zmin < zmax and nzbins >= 2)")


@dataclass
class EstimateConfig(Config):
    """How PDFs are estimated (:func:`photovaez.api.estimate`, :mod:`photovaez.estimation`).

    The number of samples of every mode is ``n_samples``; 0 takes the mode's default
    (:data:`photovaez.estimation.MODES`).
    """

    posterior: str = option("amortized", "PDF estimator: amortized (q(z|x), a mixture of log-normals), grid (model "
                            "posterior p(z|x) by importance sampling on the grid), hmc (NumPyro NUTS in log z on "
                            "the same density), snis (self-normalised importance sampling), joint (NUTS on "
                            "(log z, a, b) with the explicit joint density) or auto (amortized inside the "
                            "labelled data's support, snis outside it; ancil pdf_source and auto_reason)")
    n_b_samples: int = option(8, "amortized mode: b draws in the mixture q(z|x) = mean_k q(z|b_k, x) (antithetic "
                              "orthogonal pairs, photovaez.amortised.b_draws)")
    n_importance: int = option(0, "grid/hmc/snis/auto: importance samples N per galaxy (0 = the mode's default: "
                               "grid 256, hmc 64, snis and auto 512 per round)")
    n_importance_px: int = option(0, "samples of the IWAE log p(x) written to the ancil as log_px (0 = the mode's "
                                  "default: none in amortized mode, 256 in grid/hmc; snis reuses its own draws)")
    support_tol: float = option(1e-4, "grid mode: evaluate p(x, z) only where the amortised q(z|x) holds all but "
                                "this much mass (widened); 0 = every grid point")
    snis_defensive: float = option(0.1, "snis/auto: fraction of the draws with z uniform on the grid's range "
                                   "(a defensive proposal for posterior mass the encoder misses)")
    snis_min_ess: float = option(64.0, "snis/auto: galaxies whose Kish ESS is below this get another round of "
                                 "n_importance draws (0 = one round)")
    snis_max_rounds: int = option(4, "snis/auto: at most this many rounds of draws per galaxy")
    use_posterior_calibration: bool = option(True, "snis/auto: raise the posterior PDFs to 1/T with the "
                                             "temperature fitted at inform (calibrate_posterior; model file "
                                             "posterior_calibration; none: T = 1)")
    auto_check_quantile: float = option(0.95, "auto mode: galaxies with a labelled-support score above this "
                                        "(photovaez.support) are checked against the model posterior")
    auto_support_quantile: float = option(0.99, "auto mode: galaxies with a support score above this are "
                                          "outside the labelled support and get the model posterior")
    auto_max_dcdf: float = option(0.4, "auto mode: a checked galaxy keeps its amortised PDF when its max |dCDF| "
                                  "from one round of the snis posterior is at most this (above the snis "
                                  "estimate's own error: p90 0.19-0.22 from an N = 4096 grid reference)")
    hmc_num_warmup: int = option(300, "hmc and joint modes: warm-up (adaptation) steps per chain")
    hmc_num_samples: int = option(500, "hmc and joint modes: samples per chain")
    n_chains: int = option(2, "joint mode: NUTS chains per galaxy (>= 2 gives the split R-hat in the ancil)")
    hmc_max_tree_depth: int = option(6, "hmc mode: NUTS maximum tree depth")
    seed: int = option(0, "seed of every random draw (amortised b draws are shared by all galaxies; "
                       "posterior-mode draws are keyed by the galaxy's row index)")
    device: str = option("auto", "auto (GPU when available; under MPI rank % n_gpus), cpu, cuda or cuda:k")

    def __post_init__(self) -> None:
        for name in ("n_importance", "n_importance_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"EstimateConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.n_chains < 1:
            raise ValueError(f"EstimateConfig.n_chains must be >= 1, got {self.n_chains}")
        if self.n_b_samples < 1:
            raise ValueError(f"EstimateConfig.n_b_samples must be >= 1, got {self.n_b_samples}")
        if not 0.0 <= self.snis_defensive < 1.0:
            raise ValueError(f"EstimateConfig.snis_defensive must be in [0, 1), got {self.snis_defensive}")
        if self.snis_max_rounds < 1:
            raise ValueError(f"EstimateConfig.snis_max_rounds must be >= 1, got {self.snis_max_rounds}")
        if not 0.0 <= self.auto_check_quantile <= self.auto_support_quantile <= 1.0:
            raise ValueError(f"EstimateConfig: need 0 <= auto_check_quantile ({self.auto_check_quantile}) <= "
                             f"auto_support_quantile ({self.auto_support_quantile}) <= 1")
