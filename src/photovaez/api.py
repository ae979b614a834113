"""Table-level entry points: train a model dict from catalogues, and estimate PDFs with one.

These glue the core pieces together (features -> training -> model dict; model dict -> PDFs on a
grid with point estimates).  The RAIL stages, the command line and the benchmarks call them.
Tables are anything with named columns: a dict of arrays, a pandas DataFrame, an astropy Table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import EstimateConfig, ModelConfig, TrainConfig
from .features import FeatureSpec, Photometry, Scaler, affine_map, clean_photometry, features, fit_scaler
from .grid import normalise, point_estimates
from .io import model_from_dict, model_to_dict, validate_model_dict
from .observations import decoder_columns, observation_rows, reference_band
from .support import fit_support, support_to_dict
from .train import TrainingArrays, train_sdgm, validation_split

__all__ = ["labelled_mask", "default_filters", "build_sed_basis", "fit", "fit_streaming", "add_posterior_tools",
           "Predictor", "load_predictor", "quality_ancil", "estimate", "log_px", "latents"]

log = logging.getLogger(__name__)


def _n_rows(table: Mapping[str, Any]) -> int:
    for k in table.keys():
        return len(np.asarray(table[k]))
    return 0


def labelled_mask(table: Mapping[str, Any], redshift_col: str | None) -> np.ndarray:
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


def _training_arrays(phot: Photometry, z: np.ndarray, labelled: np.ndarray, spec: FeatureSpec,
                     mc: ModelConfig) -> TrainingArrays:
    errors = np.concatenate([phot.errs, np.zeros_like(phot.extras)], axis=1)
    return TrainingArrays(phot.values, errors, np.where(labelled, z, np.nan), labelled,
                          decoder_columns(phot, spec, mc))


def default_filters(spec: FeatureSpec) -> list[str]:
    """The filter specs of ``spec``'s bands when they are those of a feature preset
    (:data:`photovaez.filters.FILTER_PRESETS`, e.g. ``lsst`` for RAIL's DC2 columns).

    Raises
    ------
    ValueError
        The bands are not a preset's: ``ModelConfig.filters`` must name one curve per band.
    """
    from .features import PRESETS
    from .filters import FILTER_PRESETS

    for name, make in PRESETS.items():
        if name in FILTER_PRESETS and list(make().bands) == list(spec.bands):
            return list(FILTER_PRESETS[name])
    raise ValueError(f"ModelConfig.filters: the bands {list(spec.bands)} are not those of a feature preset "
                     f"({sorted(FILTER_PRESETS)}); give one filter curve per band (a file, 'rail:<path>' or a "
                     "speclite name)")


def build_sed_basis(spec: FeatureSpec, mc: ModelConfig, zmax: float, resolve: Any = None):
    """The sed decoder's tables for ``spec``'s bands: ``mc.templates`` and ``mc.filters`` (default
    :func:`default_filters`) tabulated on ``flux_table_grid(zmax)`` (:func:`photovaez.sed_decoder.sed_basis`).

    ``resolve`` turns ``"rail:<path>"`` specs into paths (``rail.photovaez.data.rail_resolver``).
    Returns the basis and the filter specs used.
    """
    from .filters import load_filters
    from .sed_decoder import sed_basis
    from .synphot import flux_table_grid
    from .templates import load_templates

    filters = list(mc.filters) or default_filters(spec)
    if len(filters) != len(spec.bands):
        raise ValueError(f"ModelConfig.filters: {len(filters)} filter curves for the {len(spec.bands)} bands "
                         f"{list(spec.bands)}; give one per band, in that order")
    curves = load_filters(filters, resolve)
    seds = load_templates(mc.templates, resolve)
    return sed_basis(seds, curves, flux_table_grid(zmax), n_correction=mc.n_correction), filters


def _fit_configs(spec: FeatureSpec | None, model_config: ModelConfig | Mapping[str, Any] | None,
                 train_config: TrainConfig | Mapping[str, Any] | None) -> tuple[FeatureSpec, ModelConfig, TrainConfig]:
    """The feature spec (default ``lsst``), the model settings completed from it, the training settings."""
    spec = spec or FeatureSpec()
    mc_dict = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config or {})
    mc = ModelConfig.from_dict({**mc_dict, "dim_x": spec.dim, "n_bands": len(spec.bands)})
    if mc.decoder == "sed" or mc.prior == "bpz":
        mc.reference_band_index = reference_band(spec.bands, mc.prior_band)
        mc.prior_band = spec.bands[mc.reference_band_index]
    tc = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(dict(train_config or {}))
    return spec, mc, tc


def _finish_fit(model: Any, report: dict, spec: FeatureSpec, scaler: Scaler, mc: ModelConfig, tc: TrainConfig,
                val_phot: Photometry, val_z: np.ndarray, phot: Photometry, labelled: np.ndarray,
                support_phot: Photometry | None = None, main_process: bool = True) -> dict:
    """The model dict of a trained network: the decoder's report, then (on the main process of a
    data-parallel run only) the calibration on the labelled validation rows ``val_phot`` /
    ``val_z`` and the posterior tools (:func:`_fit_posterior_tools`) from ``phot``."""
    if mc.decoder == "sed":
        dec = model.sed_decoder
        report["intrinsic_error"] = float(dec.intrinsic_frac.detach())
        report["zero_point_offsets_mag"] = dict(zip(spec.bands, map(float, dec.zero_point_offsets_mag())))
        log.info("sed decoder: intrinsic error %.4f; zero-point offsets (mag) %s", report["intrinsic_error"],
                 {k: round(v, 4) for k, v in report["zero_point_offsets_mag"].items()})
    if mc.prior == "bpz":
        report["bpz_prior"] = dict(zip(("alpha", "z0", "km", "m0", "alpha_slope"),
                                       map(float, model.p_z_given_m.params_numpy())))
    model_dict = model_to_dict(model, spec, scaler, tc, report)
    if not main_process:
        log.info("not rank 0: the calibration and posterior tools are left to rank 0")
        return model_dict
    if tc.calibrate:
        model_dict["calibration"] = _calibrate(model_dict, val_phot, val_z, tc)
    _fit_posterior_tools(model_dict, phot, labelled, tc, val_phot, val_z, support_phot)
    return model_dict


def fit(
    labelled_table: Mapping[str, Any],
    unlabelled_table: Mapping[str, Any] | None = None,
    spec: FeatureSpec | None = None,
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    redshift_col: str = "redshift",
    resolve: Any = None,
    distributed: Any = None,
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
        Network and training settings (objects or dicts; ``dim_x``, ``n_bands`` and
        ``reference_band_index`` are set from the spec, and the sed decoder's default ``filters``
        are filled in).
    resolve
        Turns the ``"rail:<path>"`` specs of filters and templates into paths (the RAIL stages pass
        ``rail.photovaez.data.rail_resolver``); needed by the sed decoder's presets.
    distributed
        A :class:`photovaez.distributed.DistContext` for data-parallel training (default: that of
        an initialised ``torch.distributed`` group, else one process); only rank 0 then fits the
        calibration and the posterior tools.
    """
    spec, mc, tc = _fit_configs(spec, model_config, train_config)
    basis = None

    lab_mask = labelled_mask(labelled_table, redshift_col)
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
    outside = lab_mask & ((z < tc.zmin) | (z > tc.zmax))
    if outside.any():
        log.warning("%d labelled redshifts lie outside [zmin, zmax] = [%g, %g]: the calibration and the grids "
                    "recorded in the model do not cover them", int(outside.sum()), tc.zmin, tc.zmax)
    log.info("training on %d labelled and %d unlabelled galaxies", lab_mask.sum(), (~lab_mask).sum())
    if mc.decoder == "sed":
        basis, mc.filters = build_sed_basis(spec, mc, tc.zmax + 1.0, resolve)
        log.info("sed decoder: %d templates (%s), %d correction functions, bands through %s", basis.n_templates,
                 mc.templates, basis.n_correction, ", ".join(basis.bands))
    scaler = fit_scaler(phot, spec)
    data = _training_arrays(phot, z, lab_mask, spec, mc)
    model, report = train_sdgm(data, affine_map(spec, scaler), mc, tc, basis, distributed)
    validation_index = np.asarray(report.pop("validation_index"))
    val = validation_index[data.labelled[validation_index]]
    return _finish_fit(model, report, spec, scaler, mc, tc, phot.subset(val), data.z[val], phot, data.labelled,
                       main_process=report.get("rank", 0) == 0)


def fit_streaming(
    labelled_path: str | os.PathLike,
    unlabelled_path: str | os.PathLike | None = None,
    spec: FeatureSpec | None = None,
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    redshift_col: str = "redshift",
    resolve: Any = None,
    group: str = "",
    distributed: Any = None,
) -> dict:
    """:func:`fit` from hdf5 / parquet files read chunk by chunk (:mod:`photovaez.streaming`):
    memory is bounded by ``train_config.stream_chunk_size`` (and the fixed-size samples), not by
    the files.

    The feature standardisation comes from a streamed pass over every row; the validation rows
    are ``validation_fraction`` of each file's rows, at most ``stream_max_validation`` per file;
    alpha uses the training rows' counts; each epoch visits both files' chunks in a seeded random
    order, interleaved in proportion to their sizes through a shuffle buffer of
    ``stream_buffer_chunks`` chunks.  The calibration runs on the labelled validation rows, the
    labelled support on a seeded sample of at most ``stream_sample_size`` labelled rows and the
    importance proposal on a sample of as many training rows of both files.

    Parameters
    ----------
    labelled_path
        File of photometry with ``redshift_col`` (rows whose redshift is NaN or <= 0 are used as
        unlabelled galaxies).
    unlabelled_path
        Optional file of photometry without redshifts.
    spec, model_config, train_config, redshift_col, resolve
        As for :func:`fit`; ``train_config.stream_chunk_size`` must be > 0.
    group
        The hdf5 group of the tables (RAIL's ``hdf5_groupname``; ``""`` or a group the file lacks
        = its top level).
    distributed
        As for :func:`fit`: each process streams its own shard of the chunks.
    """
    from .streaming import TrainingStream

    spec, mc, tc = _fit_configs(spec, model_config, train_config)
    stream = TrainingStream.open(labelled_path, unlabelled_path, spec, mc, redshift_col, group, tc.stream_chunk_size,
                                 tc.stream_buffer_chunks, tc.validation_fraction, tc.stream_max_validation,
                                 tc.stream_sample_size, tc.seed)
    try:
        basis = None
        if mc.decoder == "sed":
            basis, mc.filters = build_sed_basis(spec, mc, tc.zmax + 1.0, resolve)
        model, report = train_sdgm(stream, affine_map(spec, stream.scaler), mc, tc, basis, distributed)
    finally:
        stream.close()
    report.pop("validation_index")
    report["stream"] = {"chunk_size": stream.chunk_size, "buffer_chunks": stream.buffer_chunks,
                        "n_labelled_sample": len(stream.labelled_sample[1]),
                        "n_union_sample": len(stream.union_sample[1])}
    val = stream.validation.labelled
    sample_phot, sample_rows = stream.union_sample
    return _finish_fit(model, report, spec, stream.scaler, mc, tc, stream.validation_phot.subset(val),
                       stream.validation.z[val], sample_phot, sample_rows.labelled, stream.labelled_sample[0],
                       main_process=report.get("rank", 0) == 0)


def _fit_posterior_tools(model_dict: dict, phot: Photometry, labelled: np.ndarray, tc: TrainConfig,
                         val_phot: Photometry, val_z: np.ndarray, support_phot: Photometry | None = None) -> None:
    """Store in ``model_dict`` the labelled support (:mod:`photovaez.support`; of ``phot[labelled]``,
    or of ``support_phot`` when given), with ``tc.proposal_steps > 0`` the importance proposal's
    temperatures (:func:`photovaez.proposal.fit_proposal`, fitted on all of ``phot``, the training
    photometry) and, with ``tc.calibrate_posterior``, the snis posterior's temperature fitted on
    the labelled validation galaxies ``val_phot`` / ``val_z`` (:func:`_calibrate_posterior`)."""
    from .export import export_params
    from .proposal import fit_proposal, proposal_to_dict

    pred = load_predictor(model_dict)
    x = features(phot, pred.spec, pred.scaler)
    x_lab = x[labelled] if support_phot is None else features(support_phot, pred.spec, pred.scaler)
    model_dict["labelled_support"] = support_to_dict(fit_support(x_lab, k=tc.support_k, seed=tc.seed))
    if tc.proposal_steps > 0:
        obs = observation_rows(x, decoder_columns(phot, pred.spec, pred.model.config))
        prop, rep = fit_proposal(export_params(model_dict), obs, steps=tc.proposal_steps, seed=tc.seed)
        log.info("importance proposal: median Kish ESS of %d draws %.1f -> %.1f, IW bound %.3f -> %.3f%s",
                 4 * rep["n_samples"], rep["ess_before"], rep["ess_after"], rep["iw_bound_before"],
                 rep["iw_bound_after"], "" if rep["kept"] else " (not kept: no gain)")
        model_dict["proposal"] = proposal_to_dict(prop)
        model_dict.setdefault("report", {})["proposal"] = rep
    if tc.calibrate_posterior:
        model_dict["posterior_calibration"] = _calibrate_posterior(model_dict, val_phot, val_z, tc)


def _calibrate_posterior(model_dict: dict, phot: Photometry, ztrue: np.ndarray, tc: TrainConfig,
                         max_galaxies: int = 500) -> dict:
    """Temperature of the snis model posterior (its default settings) fitted on up to
    ``max_galaxies`` labelled validation galaxies, on ``[zmin, zmax]`` with spacing <= 0.005."""
    from . import posterior as post
    from .calibration import fit_temperature
    from .grid import redshift_grid

    if len(ztrue) > max_galaxies:
        keep = np.sort(np.random.default_rng(tc.seed).choice(len(ztrue), max_galaxies, replace=False))
        phot, ztrue = phot.subset(keep), ztrue[keep]
    zgrid = redshift_grid(tc.zmin, tc.zmax, max(tc.nzbins, int(np.ceil((tc.zmax - tc.zmin) / 5e-3)) + 1))
    pred = load_predictor(model_dict)
    obs, _ = pred.observations_of(phot)
    r = post.snis_posterior(pred.jax_params, obs, zgrid, seed=tc.seed)
    cal = fit_temperature(zgrid, normalise(zgrid, r.pdf)[0], ztrue)
    log.info("posterior calibration (snis) on %d validation galaxies: T = %.3f, PIT KS %.4f -> %.4f",
             cal["n"], cal["temperature"], cal["ks_before"], cal["ks_after"])
    return {**cal, "mode": "snis"}


def add_posterior_tools(model_dict: Mapping[str, Any], labelled_table: Mapping[str, Any],
                        unlabelled_table: Mapping[str, Any] | None = None, redshift_col: str = "redshift",
                        train_config: TrainConfig | Mapping[str, Any] | None = None) -> dict:
    """A copy of a trained model dict with the labelled support and the fitted importance proposal
    that :func:`fit` stores (for model files written before them; the networks are unchanged).

    ``labelled_table`` / ``unlabelled_table`` are the training tables, in the order they were
    trained on (rows whose ``redshift_col`` is not a finite positive number count as unlabelled):
    the posterior's temperature is fitted on the labelled galaxies of the training's validation
    split, which ``validation_fraction`` and ``seed`` of ``train_config`` reproduce from them.
    ``train_config`` also gives ``proposal_steps``, ``support_k`` and ``calibrate_posterior``
    (default: the model's own ``train_config``).
    """
    d = validate_model_dict(dict(model_dict))
    tc = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(
        dict(train_config or d.get("train_config") or {}))
    spec = FeatureSpec.from_dict(d["feature_spec"])
    if redshift_col not in labelled_table:
        raise KeyError(f"column {redshift_col!r} (redshift_col) is missing from the training table")
    phot, labelled = clean_photometry(labelled_table, spec), labelled_mask(labelled_table, redshift_col)
    if unlabelled_table is not None and _n_rows(unlabelled_table) > 0:
        up = clean_photometry(unlabelled_table, spec)
        phot, labelled = Photometry.concatenate([phot, up]), np.concatenate([labelled, np.zeros(len(up), bool)])
    mc = ModelConfig.from_stored(d["model_config"])
    z = np.full(len(labelled), np.nan)
    z[: len(labelled_table[redshift_col])] = np.asarray(labelled_table[redshift_col], np.float64)
    _, val = validation_split(_training_arrays(phot, z, labelled, spec, mc), tc.validation_fraction, tc.seed)
    val = val[labelled[val]]
    out = dict(d, report=dict(d.get("report", {})))
    _fit_posterior_tools(out, phot, labelled, tc, phot.subset(val), z[val])
    return out


def _calibrate(model_dict: dict, phot: Photometry, ztrue: np.ndarray, tc: TrainConfig) -> dict:
    """Temperature of the amortised PDFs fitted on labelled validation galaxies (``phot``,
    ``ztrue``), on the model's redshift range ``[zmin, zmax]``."""
    from .amortised import q_z_given_x_on_grid
    from .calibration import fit_temperature
    from .grid import redshift_grid

    # a fine grid (<= 0.001 spacing): cell averages on a coarse one widen narrow PDFs and bias T low
    n_fine = max(2001, tc.nzbins, int(np.ceil((tc.zmax - tc.zmin) / 1e-3)) + 1)
    zgrid = redshift_grid(tc.zmin, tc.zmax, n_fine)
    pred = load_predictor(model_dict)
    x = features(phot, pred.spec, pred.scaler)
    raw = q_z_given_x_on_grid(pred.jax_params, x, zgrid, n_b=EstimateConfig().n_b_samples, seed=tc.seed)
    cal = fit_temperature(zgrid, normalise(zgrid, raw)[0], ztrue)
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
        """The standardised features x (N, D_x) of a table, and its cleaned photometry."""
        phot = clean_photometry(table, self.spec)
        return features(phot, self.spec, self.scaler), phot

    def observations(self, table: Mapping[str, Any]) -> tuple[np.ndarray, Photometry]:
        """The observation rows (N, dim_obs) of a table (:mod:`photovaez.observations`): the features,
        then the decoder's columns; and its cleaned photometry."""
        return self.observations_of(clean_photometry(table, self.spec))

    def observations_of(self, phot: Photometry) -> tuple[np.ndarray, Photometry]:
        """:meth:`observations` of already cleaned photometry."""
        x = features(phot, self.spec, self.scaler)
        return observation_rows(x, decoder_columns(phot, self.spec, self.model.config)), phot

    @property
    def posterior_temperature(self) -> float:
        """Calibration temperature of the snis model posterior (1 when the model has none)."""
        return float(self.model_dict.get("posterior_calibration", {}).get("temperature", 1.0))

    @property
    def temperature(self) -> float:
        """Calibration temperature of the amortised PDFs (1 when the model has none)."""
        return float(self.model_dict.get("calibration", {}).get("temperature", 1.0))

    @property
    def labelled_support(self) -> Any:
        """The labelled data's support stored in the model (:class:`photovaez.support.LabelledSupport`)."""
        from .support import support_from_dict

        d = self.model_dict.get("labelled_support")
        if d is None:
            raise ValueError("this model file has no 'labelled_support' (it was written before photovaez stored "
                             "one); the auto mode needs it: retrain the model, or set model_dict['labelled_support'] "
                             "= photovaez.support.support_to_dict(fit_support(labelled features))")
        return support_from_dict(d)

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
    mode: str = "amortised",
    n_samples: int = 0,
    n_log_px: int | None = None,
    seed: int = 0,
    index_offset: int = 0,
    device: str = "cpu",
    **settings: Any,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PDFs of a table on ``zgrid`` with one of the modes of :mod:`photovaez.estimation`.

    Parameters
    ----------
    predictor
        A loaded model (:func:`load_predictor`).
    table
        Photometry with the feature columns.
    zgrid
        Redshift grid.
    mode
        ``amortised`` (``amortized``; the calibrated q(z|x)), ``grid``, ``hmc`` or ``snis`` (the
        model posterior p(z|x)); see :data:`photovaez.estimation.MODES`.
    n_samples
        b draws (amortised) or importance samples (grid, hmc, snis) per galaxy; 0 = the mode's
        default.
    n_log_px
        IWAE samples of the marginal ``log p(x)`` written to ``ancil["log_px"]`` (0 = no such
        column); ``None`` = the mode's default (none for amortised, 256 for grid and hmc; snis
        always reports it from its own draws).
    seed
        Fixes every random draw.
    index_offset
        Catalogue index of the table's first row: posterior-mode draws are keyed by the galaxy's
        catalogue index, so the result does not depend on how the catalogue is chunked.
    device
        Where the torch networks run (amortised q(z|x)).
    **settings
        The mode's own settings (e.g. ``support_tol`` for grid; ``num_warmup``, ``num_samples``,
        ``max_tree_depth`` for hmc; ``max_rows``, ``chunk_galaxies``).

    Returns
    -------
    pdfs
        (N, len(zgrid)) densities normalised to unit integral.
    ancil
        ``zmode``, ``zmean``, ``zmedian``, ``n_nondetect``, ``n_bad_error``, ``pdf_flag`` (see
        :func:`quality_ancil`), the mode's own columns (grid: ``ess_at_mode``; hmc:
        ``divergences``, ``ess``) and, where reported, ``log_px`` and ``kish_ess``.
    """
    from .estimation import COMMON_ANCIL, LOG_PX_ANCIL, resolve_mode

    m = resolve_mode(mode)
    zgrid = np.asarray(zgrid, dtype=np.float64)
    n_log_px = m.default_n_log_px if n_log_px is None else int(n_log_px)
    with_log_px = m.log_px_from_draws or n_log_px > 0
    if _n_rows(table) == 0:
        keys = COMMON_ANCIL + m.ancil + (LOG_PX_ANCIL if with_log_px else ())
        dtypes = {"n_nondetect": np.int16, "n_bad_error": np.int16, "pdf_flag": np.int8}
        return np.zeros((0, len(zgrid))), {k: np.zeros(0, dtypes.get(k, np.float64)) for k in keys}
    x, phot = predictor.observations(table)
    r = m.run(predictor, x, zgrid, int(n_samples or m.default_n_samples), seed, index_offset, device, **settings)
    pdfs, flag = normalise(zgrid, r.pdf)
    ancil = point_estimates(zgrid, pdfs)
    ancil.update(r.ancil)
    if with_log_px and not m.log_px_from_draws:
        from . import posterior as post

        lp = post.log_px(predictor.jax_params, x, n_importance=n_log_px, seed=seed, index_offset=index_offset)
        ancil["log_px"], ancil["kish_ess"] = lp.log_px, lp.kish_ess
    ancil.update(quality_ancil(phot, np.maximum(flag, np.asarray(r.flag, np.int8))))
    return pdfs, ancil


def log_px(predictor: Predictor, table: Mapping[str, Any], n_importance: int = 256, seed: int = 0,
           index_offset: int = 0) -> np.ndarray:
    """IWAE estimate of the marginal log p(x) per galaxy (:func:`photovaez.posterior.log_px`): low
    values flag photometry unlike the training data.  Draws are keyed by catalogue index
    (``index_offset``)."""
    from . import posterior as post

    if _n_rows(table) == 0:
        return np.zeros(0)
    x, _ = predictor.observations(table)
    return post.log_px(predictor.jax_params, x, n_importance=n_importance, seed=seed, index_offset=index_offset).log_px


def latents(
    predictor: Predictor | Mapping[str, Any],
    table: Mapping[str, Any],
    z: np.ndarray | None = None,
    zgrid: np.ndarray | None = None,
    n_b: int = 0,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, np.ndarray]:
    """Latent embeddings of a table: the means of q(b|x) and of q(a|x, b, z).

    ``b`` is the mean of q(b|x); ``a`` is the mean of q(a|x, b, z) at that b and at ``z``: the
    given redshifts (e.g. the true ones) or, when ``z`` is None, the amortised ``zmode``
    (:func:`estimate` on ``zgrid``, default ``linspace(0, 3, 301)``, with ``n_b`` draws, 0 = the
    amortised mode's default).  ``predictor`` may also be
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
        z = estimate(predictor, table, zg, n_samples=n_b, seed=seed)[1]["zmode"]
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
            mu_a, mu_b = model.latent_means(xb, zb)
            a_out[s : s + batch_size] = mu_a.numpy()
            b_out[s : s + batch_size] = mu_b.numpy()
    return {"a": a_out, "b": b_out, "z": z}

