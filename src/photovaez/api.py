"""Table-level entry points: train a model dict from catalogues, and estimate PDFs with one.

These glue the core pieces together (features -> training -> model dict; model dict -> PDFs on a
grid with point estimates).  The RAIL stages, the command line and the benchmarks call them.
Tables are anything with named columns: a dict of arrays, a pandas DataFrame, an astropy Table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .features import FeatureSpec, Photometry, Scaler, affine_map, clean_photometry, features, fit_scaler
from .grid import normalise, point_estimates
from .io import model_from_dict, model_to_dict, validate_model_dict
from .model import ModelConfig
from .train import TrainConfig, TrainingArrays, train_sdgm

__all__ = ["split_labelled", "fit", "Predictor", "load_predictor", "estimate"]

log = logging.getLogger("photovaez")


def _n_rows(table: Mapping[str, Any]) -> int:
    for k in table.keys():
        return len(np.asarray(table[k]))
    return 0


def split_labelled(table: Mapping[str, Any], redshift_col: str | None) -> np.ndarray:
    """Labelled mask of a table: rows whose ``redshift_col`` is finite and > 0.  A table without
    that column (or ``redshift_col=None``) is all unlabelled."""
    n = _n_rows(table)
    if not redshift_col or redshift_col not in table:
        return np.zeros(n, bool)
    z = np.asarray(table[redshift_col])
    if z.dtype.kind not in "fiu":
        raise TypeError(f"column {redshift_col!r} (redshift_col) must hold numbers, got dtype {z.dtype}")
    z = z.astype(np.float64)
    return np.isfinite(z) & (z > 0)


def _training_arrays(phot: Photometry, z: np.ndarray, labelled: np.ndarray) -> TrainingArrays:
    errors = np.concatenate([phot.errs, np.zeros_like(phot.extras)], axis=1)
    return TrainingArrays(phot.values, errors, np.where(labelled, z, np.nan), labelled)


def fit(
    labelled_table: Mapping[str, Any],
    unlabelled_table: Mapping[str, Any] | None = None,
    spec: FeatureSpec | None = None,
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    redshift_col: str = "redshift",
) -> dict:
    """Train PhotoVAEz and return the plain model dict (see :mod:`photovaez.io`).

    Parameters
    ----------
    labelled_table
        Photometry with redshifts.  Rows whose ``redshift_col`` is NaN or <= 0 are used as
        unlabelled galaxies.
    unlabelled_table
        Optional photometry without (usable) redshifts; it must have the feature columns.
    spec
        Feature specification (default: the ``lsst`` preset).
    model_config, train_config
        Network and training settings (objects or dicts; ``dim_x`` is set from the spec).
    """
    spec = spec or FeatureSpec()
    mc_dict = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config or {})
    mc = ModelConfig.from_dict({**mc_dict, "dim_x": spec.dim})
    tc = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(dict(train_config or {}))

    lab_mask = split_labelled(labelled_table, redshift_col)
    if redshift_col not in labelled_table:
        raise KeyError(f"column {redshift_col!r} (redshift_col) is missing from the training table")
    if not lab_mask.all():
        log.warning("%d training rows have a NaN, infinite, zero or negative %r: used as unlabelled galaxies",
                    int((~lab_mask).sum()), redshift_col)
    phot = clean_photometry(labelled_table, spec)
    z = np.asarray(labelled_table[redshift_col], dtype=np.float64)
    if unlabelled_table is not None and _n_rows(unlabelled_table) > 0:
        try:
            up = clean_photometry(unlabelled_table, spec)
        except KeyError as exc:
            raise KeyError(f"unlabelled table: {exc.args[0]}") from None
        phot = Photometry.concatenate([phot, up])
        z = np.concatenate([z, np.full(len(up), np.nan)])
        lab_mask = np.concatenate([lab_mask, np.zeros(len(up), bool)])
    if lab_mask.sum() == 0:
        raise ValueError(f"no labelled galaxies: column {redshift_col!r} has no finite value > 0")
    log.info("training on %d labelled and %d unlabelled galaxies", lab_mask.sum(), (~lab_mask).sum())
    scaler = fit_scaler(phot, spec)
    data = _training_arrays(phot, z, lab_mask)
    model, report = train_sdgm(data, affine_map(spec, scaler), mc, tc)
    model_dict = model_to_dict(model, spec, scaler, tc, report)
    if tc.calibrate:
        model_dict["calibration"] = _calibrate(model_dict, phot, data, tc)
    return model_dict


def _calibrate(model_dict: dict, phot: Photometry, data: TrainingArrays, tc: TrainConfig) -> dict:
    """Temperature of the amortised PDFs fitted on the labelled validation galaxies."""
    from .amortized import q_z_given_x_on_grid
    from .calibration import fit_temperature
    from .grid import redshift_grid
    from .train import validation_split

    _, val = validation_split(data, tc.validation_fraction, tc.seed)
    val = val[data.labelled[val]]
    # a fine grid: cell averages on a coarse one would widen narrow PDFs and bias T low
    zgrid = redshift_grid(0.0, 1.5 * float(np.max(data.z[data.labelled])), 2001)
    pred = load_predictor(model_dict)
    x = features(phot.subset(val), pred.spec, pred.scaler)
    raw = q_z_given_x_on_grid(pred.model, x, zgrid, n_b=16, seed=tc.seed)
    cal = fit_temperature(zgrid, normalise(zgrid, raw)[0], data.z[val])
    log.info("calibration on %d validation galaxies: T = %.3f, PIT KS %.4f -> %.4f",
             cal["n"], cal["temperature"], cal["ks_before"], cal["ks_after"])
    return cal


@dataclass
class Predictor:
    """A loaded model ready to estimate: the torch network, its features and their scaling."""

    model_dict: dict
    spec: FeatureSpec
    scaler: Scaler
    model: Any
    _jax_params: Any = field(default=None, repr=False, compare=False)

    def features(self, table: Mapping[str, Any]) -> tuple[np.ndarray, Photometry]:
        phot = clean_photometry(table, self.spec)
        return features(phot, self.spec, self.scaler), phot

    @property
    def temperature(self) -> float:
        """Calibration temperature of the amortised PDFs (1 when the model has none)."""
        return float(self.model_dict.get("calibration", {}).get("temperature", 1.0))

    @property
    def jax_params(self) -> Any:
        """The networks exported to JAX (:func:`photovaez.export.export_params`), built once."""
        if self._jax_params is None:
            from .export import export_params

            self._jax_params = export_params(self.model_dict)
        return self._jax_params


def load_predictor(model_dict: Mapping[str, Any]) -> Predictor:
    """Build a :class:`Predictor` from a model dict (validated)."""
    d = validate_model_dict(dict(model_dict))
    return Predictor(d, FeatureSpec.from_dict(d["feature_spec"]), Scaler.from_dict(d["scaler"]), model_from_dict(d))


def quality_ancil(phot: Photometry, flag: np.ndarray) -> dict[str, np.ndarray]:
    """Per-galaxy input-quality columns of the ancil.

    ``n_nondetect``: bands replaced by their limit (non-detections, NaN, +-inf, 99, -9999);
    ``n_bad_error``: detected bands whose error was missing, non-finite or <= 0 and was replaced
    by ``replace_error_vals``; ``pdf_flag``: 0 fine, 1 no finite PDF could be made (a flat PDF is
    returned; from ``flag``), 2 every band a non-detection (the PDF is the model's answer for
    band limits only).
    """
    n_nd = phot.nondetect.sum(axis=1).astype(np.int16)
    flag = np.where((flag == 0) & (n_nd == phot.nondetect.shape[1]), 2, flag).astype(np.int8)
    return {"n_nondetect": n_nd, "n_bad_error": phot.bad_error.sum(axis=1).astype(np.int16), "pdf_flag": flag}


def estimate(
    predictor: Predictor,
    table: Mapping[str, Any],
    zgrid: np.ndarray,
    n_b: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Amortised PDFs of a table on ``zgrid``, with the model's calibration temperature
    (:mod:`photovaez.calibration`) applied.

    Returns
    -------
    pdfs
        (N, len(zgrid)) densities normalised to unit integral.
    ancil
        ``zmode``, ``zmean``, ``zmedian`` and the input-quality columns of :func:`quality_ancil`
        (``n_nondetect``, ``n_bad_error``, ``pdf_flag``).
    """
    from .amortized import q_z_given_x_on_grid

    n = _n_rows(table)
    if n == 0:
        empty = np.zeros((0, len(zgrid)))
        return empty, {k: np.zeros(0) for k in ("zmode", "zmean", "zmedian")} | {
            "n_nondetect": np.zeros(0, np.int16), "n_bad_error": np.zeros(0, np.int16), "pdf_flag": np.zeros(0, np.int8)}
    from .calibration import apply_temperature

    x, phot = predictor.features(table)
    raw = q_z_given_x_on_grid(predictor.model, x, zgrid, n_b=n_b, seed=seed, device=device)
    pdfs, flag = apply_temperature(zgrid, raw, predictor.temperature)
    ancil = point_estimates(zgrid, pdfs)
    ancil.update(quality_ancil(phot, flag))
    return pdfs, ancil


def estimate_posterior(
    predictor: Predictor,
    table: Mapping[str, Any],
    zgrid: np.ndarray,
    mode: str = "grid",
    n_importance: int | None = None,
    seed: int = 0,
    n_importance_px: int = 256,
    index_offset: int = 0,
    **settings: Any,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Model-posterior PDFs p(z|x) of a table on ``zgrid`` (SPEC "Photo-z estimation" 2).

    The trained networks are exported to JAX (:mod:`photovaez.export`) and the importance-sampled
    log p(x, z) of :mod:`photovaez.posterior` is used in one of three ways.

    Parameters
    ----------
    predictor
        A loaded model (:func:`load_predictor`).
    table
        Photometry with the feature columns.
    zgrid
        Redshift grid.
    mode
        ``"grid"``: log p(x, z) on the grid, normalised exactly (:func:`photovaez.posterior.grid_posterior`).
        ``"hmc"``: NUTS in log z, one chain per galaxy, KDE on the grid (:func:`~photovaez.posterior.hmc_posterior`).
        ``"snis"``: self-normalised importance sampling of (z, a, b) from the encoder
        (:func:`~photovaez.posterior.snis_posterior`).
    n_importance
        Importance samples per galaxy (default 256 for grid, 64 for hmc, 1024 for snis).
    seed
        Fixes every random draw.
    n_importance_px
        Samples of the IWAE log p(x) reported in ``ancil["log_px"]`` (snis reuses its own draws).
    index_offset
        Catalogue index of the table's first row: every galaxy's random draws are keyed by its
        catalogue index, so the result does not depend on how the catalogue is chunked.
    **settings
        Passed on to the mode's function (e.g. ``support_tol``, ``max_rows``, ``num_warmup``,
        ``num_samples``, ``max_tree_depth``, ``chunk_galaxies``).

    Returns
    -------
    pdfs
        (N, len(zgrid)) densities normalised to unit integral.
    ancil
        ``zmode``, ``zmean``, ``zmedian``, ``log_px``, ``kish_ess`` (of the log p(x) weights),
        ``n_nondetect``, ``n_bad_error``, ``pdf_flag``; for ``grid`` also ``ess_at_mode`` (Kish ESS of the N weights
        at the posterior mode); for ``hmc`` also ``divergences`` and ``ess``.
    """
    from . import posterior as post

    if mode not in ("grid", "hmc", "snis"):
        raise ValueError(f"mode must be 'grid', 'hmc' or 'snis', got {mode!r}")
    zgrid = np.asarray(zgrid, dtype=np.float64)
    n = _n_rows(table)
    extra = {"grid": ("ess_at_mode",), "hmc": ("divergences", "ess"), "snis": ()}[mode]
    if n == 0:
        keys = ("zmode", "zmean", "zmedian", "log_px", "kish_ess") + extra
        return np.zeros((0, len(zgrid))), {k: np.zeros(0) for k in keys} | {
            "n_nondetect": np.zeros(0, np.int16), "n_bad_error": np.zeros(0, np.int16), "pdf_flag": np.zeros(0, np.int8)}
    n_imp = int(n_importance or {"grid": 256, "hmc": 64, "snis": 1024}[mode])
    params = predictor.jax_params
    x, phot = predictor.features(table)
    ancil: dict[str, np.ndarray] = {}
    if mode == "grid":
        r = post.grid_posterior(params, x, zgrid, n_importance=n_imp, seed=seed, index_offset=index_offset, **settings)
        raw, ancil["ess_at_mode"] = r.pdf, r.ess_at_mode
    elif mode == "hmc":
        r = post.hmc_posterior(params, x, zgrid, n_importance=n_imp, seed=seed, index_offset=index_offset, **settings)
        raw, ancil["divergences"], ancil["ess"] = r.pdf, r.divergences, r.ess
    else:
        r = post.snis_posterior(params, x, zgrid, n_importance=n_imp, seed=seed, index_offset=index_offset, **settings)
        raw = r.pdf
        ancil["log_px"], ancil["kish_ess"] = r.log_px, r.kish_ess
    if mode != "snis":
        lp = post.log_px(params, x, n_importance=n_importance_px, seed=seed, index_offset=index_offset)
        ancil["log_px"], ancil["kish_ess"] = lp.log_px, lp.kish_ess
    pdfs, flag = normalise(zgrid, raw)
    flag = np.maximum(flag, np.asarray(r.flag, np.int8))
    out = point_estimates(zgrid, pdfs)
    out.update(ancil)
    out.update(quality_ancil(phot, flag))
    return pdfs, out


def log_px(predictor: Predictor, table: Mapping[str, Any], n_importance: int = 256, seed: int = 0,
           index_offset: int = 0) -> np.ndarray:
    """IWAE estimate of log p(x) per galaxy (:func:`photovaez.posterior.log_px`): low values flag
    photometry unlike the training data.  Draws are keyed by catalogue index (``index_offset``)."""
    from . import posterior as post

    if _n_rows(table) == 0:
        return np.zeros(0)
    x, _ = predictor.features(table)
    return post.log_px(predictor.jax_params, x, n_importance=n_importance, seed=seed, index_offset=index_offset).log_px


__all__ += ["estimate_posterior", "log_px"]


def latents(
    predictor: Predictor | Mapping[str, Any],
    table: Mapping[str, Any],
    z: np.ndarray | None = None,
    zgrid: np.ndarray | None = None,
    n_b: int = 16,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, np.ndarray]:
    """Latent embeddings of a table: the means of q(b|x) and of q(a|x, b, z).

    ``b`` is the mean of q(b|x); ``a`` is the mean of q(a|x, b, z) at that b and at ``z``: the
    given redshifts (e.g. the true ones) or, when ``z`` is None, the amortised ``zmode``
    (:func:`estimate` on ``zgrid``, default ``linspace(0, 3, 301)``).  ``predictor`` may also be
    a model dict.

    Returns
    -------
    dict
        ``a`` (N, A), ``b`` (N, B) and ``z`` (N,), the redshifts used for ``a`` (clipped to
        >= 1e-4, since the networks see log z).
    """
    import torch

    if not isinstance(predictor, Predictor):
        predictor = load_predictor(predictor)
    n = _n_rows(table)
    cfg = predictor.model.config
    if n == 0:
        return {"a": np.zeros((0, cfg.dim_a)), "b": np.zeros((0, cfg.dim_b)), "z": np.zeros(0)}
    if z is None:
        zg = np.linspace(0.0, 3.0, 301) if zgrid is None else np.asarray(zgrid, np.float64)
        z = estimate(predictor, table, zg, n_b=n_b, seed=seed)[1]["zmode"]
    z = np.asarray(z, np.float64).reshape(-1)
    if len(z) != n:
        raise ValueError(f"latents: {len(z)} redshifts for a table of {n} rows")
    z = np.clip(np.where(np.isfinite(z), z, 1e-4), 1e-4, None)
    x, _ = predictor.features(table)
    model = predictor.model.to("cpu").eval()
    a_out, b_out = np.empty((n, cfg.dim_a)), np.empty((n, cfg.dim_b))
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = torch.as_tensor(x[s : s + batch_size], dtype=torch.float32)
            zb = torch.as_tensor(z[s : s + batch_size], dtype=torch.float32)
            mu_b, _ = model.q_b_given_x_net(xb)
            mu_a, _ = model.q_a_given_xbz_net(xb, mu_b, model.z_input(zb))
            a_out[s : s + batch_size] = mu_a.numpy()
            b_out[s : s + batch_size] = mu_b.numpy()
    return {"a": a_out, "b": b_out, "z": z}


__all__ += ["latents"]
