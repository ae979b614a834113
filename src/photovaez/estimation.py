"""Estimation modes: one registry of the ways PhotoVAEz turns features into PDFs on a grid.

Every mode is a :class:`Mode`: a function of ``(predictor, x, zgrid, n_samples, seed,
index_offset, device, **settings)`` returning a :class:`ModeResult`, the default number of
samples, the default number of IWAE samples of log p(x), the ancil columns it adds and the
:class:`photovaez.config.EstimateConfig` fields it reads.  :func:`photovaez.api.estimate` is the
one entry point; the RAIL estimator only maps its configuration onto it.

========== ==================================================================== ============
mode       PDF                                                                  n_samples
========== ==================================================================== ============
amortised  q(z|x), a mixture of log-normals q(z|b_k, x), b_k ~ q(b|x), with the  8 (b draws)
           model's calibration temperature (:mod:`photovaez.amortised`)
grid       p(z|x) from the importance-sampled log p(x, z) on the grid           256
           (:func:`photovaez.posterior.grid_posterior`)
hmc        NumPyro NUTS in log z on the same density, KDE on the grid           64
snis       self-normalised importance sampling of (z, a, b) from the tempered   512 per round
           encoder (:mod:`photovaez.proposal`) with a defensive uniform-z part,
           more rounds where the ESS is low
joint      NumPyro NUTS on (log z, a, b) with the explicit joint density, no    2 (chains)
           importance weights (:func:`photovaez.joint_hmc.joint_hmc_posterior`)
auto       per galaxy: amortised inside the labelled data's support             512 (snis)
           (:mod:`photovaez.support`), snis outside it and where they disagree
           at its edge; ``pdf_source`` and ``auto_reason`` say which and why
========== ==================================================================== ============

``amortized`` (RAIL's spelling, the stage's value) names the amortised mode too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .grid import normalise

__all__ = ["Mode", "ModeResult", "MODES", "AUTO_REASONS", "COMMON_ANCIL", "resolve_mode", "estimate_arguments"]

#: ancil columns of every mode (:func:`photovaez.grid.point_estimates`, :func:`photovaez.api.quality_ancil`)
COMMON_ANCIL = ("zmode", "zmean", "zmedian", "n_nondetect", "n_bad_error", "pdf_flag")
#: ancil columns of the IWAE log p(x) (:func:`photovaez.posterior.log_px`)
LOG_PX_ANCIL = ("log_px", "kish_ess")


class ModeResult(NamedTuple):
    """What a mode function returns: densities on the grid (not necessarily normalised), its own
    ancil columns, and a per-galaxy flag (1 where no finite PDF came out)."""

    pdf: np.ndarray
    ancil: dict[str, np.ndarray]
    flag: np.ndarray


class Mode(NamedTuple):
    """An estimation mode.

    Attributes
    ----------
    name
        The mode's name.
    run
        ``run(predictor, x, zgrid, n_samples, seed, index_offset, device, **settings) -> ModeResult``.
    default_n_samples
        Samples used when ``n_samples`` is 0 (b draws for ``amortised``, importance samples else).
    default_n_log_px
        IWAE samples of the ``log_px`` ancil when not given (0: no ``log_px`` column).
    ancil
        Ancil columns the mode adds to :data:`COMMON_ANCIL` (besides ``log_px``, ``kish_ess``).
    samples_key
        The :class:`~photovaez.config.EstimateConfig` field that gives ``n_samples``.
    config_keys
        ``{EstimateConfig field: keyword of run}`` for the mode's own settings.
    log_px_from_draws
        The mode's own draws give ``log_px`` and ``kish_ess`` (no separate IWAE pass).
    """

    name: str
    run: Callable[..., ModeResult]
    default_n_samples: int
    default_n_log_px: int
    ancil: tuple[str, ...] = ()
    samples_key: str = "n_importance"
    config_keys: Mapping[str, str] = {}
    log_px_from_draws: bool = False


def _amortised(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
               device: str) -> ModeResult:
    from .amortised import q_z_given_x_on_grid

    pdf = q_z_given_x_on_grid(predictor.jax_params, x, zgrid, n_b=n_samples, seed=seed,
                              temperature=predictor.temperature, device=device)
    return ModeResult(pdf, {}, np.zeros(len(x), np.int8))


def _grid(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
          device: str, support_tol: float | None = None, n_b_support: int = 32, **settings: Any) -> ModeResult:
    from . import posterior as post
    from .amortised import q_z_given_x_on_grid

    support = None
    if support_tol:
        amortised = q_z_given_x_on_grid(predictor.jax_params, x, zgrid, n_b=n_b_support, seed=seed, device=device)
        support = post.support_mask(zgrid, amortised, support_tol)
    r = post.grid_posterior(predictor.jax_params, x, zgrid, n_importance=n_samples, seed=seed, support=support,
                            index_offset=index_offset, **settings)
    return ModeResult(r.pdf, {"ess_at_mode": r.ess_at_mode}, r.flag)


def _hmc(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
         device: str, **settings: Any) -> ModeResult:
    from . import posterior as post

    r = post.hmc_posterior(predictor.jax_params, x, zgrid, n_importance=n_samples, seed=seed,
                           index_offset=index_offset, **settings)
    return ModeResult(r.pdf, {"divergences": r.divergences, "ess": r.ess}, r.flag)


def _joint(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
           device: str, **settings: Any) -> ModeResult:
    from .joint_hmc import joint_hmc_posterior

    r = joint_hmc_posterior(predictor.jax_params, x, zgrid, n_chains=n_samples, seed=seed, index_offset=index_offset,
                            **settings)
    return ModeResult(r.pdf, {"divergences": r.divergences, "rhat": r.rhat, "ess": r.ess}, r.flag)


def _snis_calibrated(predictor: Any, x: np.ndarray, zgrid: np.ndarray, calibrate: bool, **kwargs: Any):
    """snis_posterior, its PDFs raised to 1/T with the model's posterior temperature when ``calibrate``."""
    from . import posterior as post
    from .calibration import apply_temperature

    r = post.snis_posterior(predictor.jax_params, x, zgrid, **kwargs)
    if calibrate and predictor.posterior_temperature != 1.0:
        r.pdf, flag = apply_temperature(zgrid, r.pdf, predictor.posterior_temperature)
        r.flag = np.maximum(r.flag, flag)
    return r


def _snis(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
          device: str, calibrate: bool = True, **settings: Any) -> ModeResult:
    r = _snis_calibrated(predictor, x, zgrid, calibrate, n_importance=n_samples, seed=seed, index_offset=index_offset,
                         **settings)
    return ModeResult(r.pdf, {"log_px": r.log_px, "kish_ess": r.kish_ess, "n_draws": r.n_draws}, r.flag)


#: ``auto_reason`` codes of the auto mode
AUTO_REASONS = {
    0: "amortised: inside the labelled support (support_score <= auto_check_quantile)",
    1: "amortised: at the edge of the labelled support, agrees with the model posterior",
    2: "posterior: at the edge of the labelled support, the amortised PDF disagrees with it",
    3: "posterior: outside the labelled support (support_score > auto_support_quantile)",
}


def _auto(predictor: Any, x: np.ndarray, zgrid: np.ndarray, n_samples: int, seed: int, index_offset: int,
          device: str, n_b: int = 8, check_quantile: float = 0.95, support_quantile: float = 0.99,
          max_dcdf: float = 0.4, calibrate: bool = True, **settings: Any) -> ModeResult:
    """Per galaxy, the amortised q(z|x) or the model posterior (snis), with the reason.

    The support score (:func:`photovaez.support.support_score`) places a galaxy among the labelled
    ones.  Up to ``check_quantile`` the amortised PDF is used (reason 0); beyond
    ``support_quantile`` the galaxy is an extrapolation and gets the posterior (3); in between, the
    amortised PDF is checked against one round of the posterior's draws and replaced by the
    posterior (all its rounds) where their max |dCDF| exceeds ``max_dcdf`` (2; else 1).
    """
    from .grid import cdf_on_grid
    from .support import support_score

    if not 0.0 <= check_quantile <= support_quantile <= 1.0:
        raise ValueError(f"auto mode: need 0 <= auto_check_quantile ({check_quantile}) <= auto_support_quantile "
                         f"({support_quantile}) <= 1")
    score = support_score(predictor.labelled_support, x[:, :predictor.spec.dim])
    amortised = _amortised(predictor, x, zgrid, n_b, seed, index_offset, device)
    pdf, flag = amortised.pdf.copy(), np.asarray(amortised.flag).copy()
    reason = np.where(score > support_quantile, 3, np.where(score > check_quantile, 1, 0)).astype(np.int8)
    ess = np.full(len(x), np.nan)

    def posterior(rows: np.ndarray, **kw: Any):
        return _snis_calibrated(predictor, x[rows], zgrid, calibrate, n_importance=n_samples, seed=seed,
                                indices=rows + index_offset, **{**settings, **kw})

    edge = np.flatnonzero(reason == 1)
    if len(edge):  # the check: one round of draws (the same first round as the posterior's)
        r = posterior(edge, max_rounds=1)
        dcdf = np.abs(cdf_on_grid(zgrid, normalise(zgrid, pdf[edge])[0]) - cdf_on_grid(zgrid, r.pdf)).max(1)
        reason[edge[dcdf > max_dcdf]] = 2
        ess[edge] = r.kish_ess
    use = np.flatnonzero(reason >= 2)
    if len(use):
        r = posterior(use)
        pdf[use], flag[use], ess[use] = r.pdf, np.maximum(flag[use], r.flag), r.kish_ess
    source = (reason >= 2).astype(np.int8)
    return ModeResult(pdf, {"pdf_source": source, "auto_reason": reason, "support_score": score,
                            "posterior_ess": ess}, flag)


_SNIS_KEYS = {"snis_defensive": "defensive", "snis_min_ess": "min_ess", "snis_max_rounds": "max_rounds",
              "use_posterior_calibration": "calibrate"}
MODES: dict[str, Mode] = {
    "amortised": Mode("amortised", _amortised, default_n_samples=8, default_n_log_px=0, samples_key="n_b_samples"),
    "grid": Mode("grid", _grid, default_n_samples=256, default_n_log_px=256, ancil=("ess_at_mode",),
                 config_keys={"support_tol": "support_tol"}),
    "hmc": Mode("hmc", _hmc, default_n_samples=64, default_n_log_px=256, ancil=("divergences", "ess"),
                config_keys={"hmc_num_warmup": "num_warmup", "hmc_num_samples": "num_samples",
                             "hmc_max_tree_depth": "max_tree_depth"}),
    "snis": Mode("snis", _snis, default_n_samples=512, default_n_log_px=0, log_px_from_draws=True, ancil=("n_draws",),
                 config_keys=_SNIS_KEYS),
    "auto": Mode("auto", _auto, default_n_samples=512, default_n_log_px=0,
                 ancil=("pdf_source", "auto_reason", "support_score", "posterior_ess"),
                 config_keys={"n_b_samples": "n_b", "auto_check_quantile": "check_quantile",
                              "auto_support_quantile": "support_quantile", "auto_max_dcdf": "max_dcdf",
                              **_SNIS_KEYS}),
    "joint": Mode("joint", _joint, default_n_samples=2, default_n_log_px=256, ancil=("divergences", "rhat", "ess"),
                  config_keys={"hmc_num_warmup": "num_warmup", "hmc_num_samples": "num_samples"},
                  samples_key="n_chains"),
}
_ALIASES = {"amortized": "amortised"}


def resolve_mode(name: str) -> Mode:
    """The :class:`Mode` called ``name`` (``amortized`` = ``amortised``); a ValueError naming the
    known modes (and the closest one) otherwise."""
    key = _ALIASES.get(str(name), str(name))
    if key not in MODES:
        names = ["amortized", *[m for m in MODES if m != "amortised"]]
        close = difflib.get_close_matches(str(name), names + list(MODES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"posterior={name!r} is not one of {names}{hint}")
    return MODES[key]


def estimate_arguments(mode: Mode, config: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`photovaez.api.estimate` for ``mode`` that an
    :class:`~photovaez.config.EstimateConfig` gives: ``mode``, ``n_samples``, ``n_log_px`` (0 in the
    config = the mode's default), ``seed`` and the mode's own settings."""
    return {"mode": mode.name, "n_samples": getattr(config, mode.samples_key),
            "n_log_px": config.n_importance_px or None, "seed": config.seed,
            **{kw: getattr(config, field) for field, kw in mode.config_keys.items()}}
