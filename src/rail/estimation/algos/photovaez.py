"""RAIL stages of PhotoVAEz, the semi-supervised Skip Deep Generative Model photo-z estimator.

* :class:`PhotoVAEzInformer` trains the model on a labelled table (``input``) and, optionally, an
  unlabelled table (``unlabeled``).  Rows of ``input`` whose redshift is NaN or <= 0 also count as
  unlabelled galaxies.  With ``stream_chunk_size`` > 0 and the inputs given as hdf5 / parquet
  files, they are streamed chunk by chunk (:mod:`photovaez.streaming`) instead of read whole.
* :class:`PhotoVAEzEstimator` gives the amortised PDFs q(z|x) on RAIL's grid
  ``linspace(zmin, zmax, nzbins)`` as a ``qp.interp`` ensemble, with ``zmode``, ``zmean``,
  ``zmedian``, ``n_nondetect``, ``n_bad_error`` and ``pdf_flag`` in the ancil table.
* :class:`PhotoVAEzModelHandle` reads and writes the model file (a plain-data pickle, read with a
  restricted unpickler, written atomically; see :mod:`photovaez.io`).

The stages only translate RAIL configuration and data handles into calls of the core package
(:func:`photovaez.api.fit`, :func:`photovaez.api.estimate`).  Torch and the model code are imported
inside ``run``/``open_model`` so that importing this module (which RAIL does for every installed
plugin) stays cheap.

Configuration notes
-------------------
* The options of the networks, the training and the estimation are the fields of the core's
  :class:`photovaez.config.ModelConfig`, :class:`~photovaez.config.TrainConfig` and
  :class:`~photovaez.config.EstimateConfig`, declared there once with their help text
  (:func:`_params_from`); the stages add the feature options and RAIL's own.  The informer's
  ``zmin``, ``zmax``, ``nzbins`` (RAIL's shared informer options) are the model's redshift range.
* Column options (``bands``, ``err_bands``, ``ref_band``, ``mag_limits``, ``nondetect_val``,
  ``redshift_col``, ``replace_error_vals``) are RAIL's shared parameters, so catalogue tags
  (``rail.utils.catalog_utils.apply_defaults``) change them.
* ``mag_limits`` must give a limit for every band in ``bands``; a missing band is a ``ValueError``
  that names it (there is no silent default).
* ``ref_band`` must be one of ``bands``.  By default every band enters the features as a
  magnitude (the SPEC's DC2 set: 6 magnitudes + 5 colours); ``only_ref_mag=True`` keeps only
  the ``ref_band`` magnitude plus the colours (the FlexZBoost/KNN convention).
* Unknown configuration keys raise a ``ValueError`` naming the key and the closest known option
  (RAIL itself accepts them silently).  Keys of a pipeline config file's ``global`` section are
  exempt, since they are shared by every stage.
"""

from __future__ import annotations

import difflib
import gc
import inspect
import math
import os
from typing import Any

import numpy as np
from ceci.config import StageParameter as Param
from rail.core.common_params import SHARED_PARAMS
from rail.core.data import ModelHandle, TableHandle, TableLike
from rail.core.enums import DistributionType
from rail.estimation.estimator import CatEstimator
from rail.estimation.informer import CatInformer

from photovaez.config import EstimateConfig, ModelConfig, TrainConfig, options

__all__ = ["PhotoVAEzModelHandle", "PhotoVAEzInformer", "PhotoVAEzEstimator"]


# --------------------------------------------------------------------------------------------
# model file handle


class PhotoVAEzModelHandle(ModelHandle):
    """Model file of PhotoVAEz: a pickle of plain data (dicts, lists, numbers, numpy arrays).

    Reading uses :func:`photovaez.io.load_model`, which refuses any pickled class or function
    (so a tampered file cannot run code) and checks the format version; writing uses
    :func:`photovaez.io.save_model` (temporary file + rename, so a crash never leaves half a file).
    """

    suffix = "pkl"

    @classmethod
    def _open(cls, path: str, **kwargs: Any) -> Any:
        if kwargs.get("mode", "r") == "w":
            return open(path, mode="wb")  # pylint: disable=consider-using-with
        return cls._read(path)

    @classmethod
    def _read(cls, path: str, **kwargs: Any) -> dict:
        from photovaez.io import load_model

        return load_model(path)

    @classmethod
    def _write(cls, data: Any, path: str, **kwargs: Any) -> None:
        from photovaez.io import save_model

        save_model(data, path)


# --------------------------------------------------------------------------------------------
# shared helpers

# Keys that RAIL or ceci put into a stage's config besides the config_options: the stage name,
# the config file, aliases, connections and ceci's own command-line flags.
_FRAMEWORK_KEYS = frozenset(
    {"name", "config", "aliases", "comm", "connections", "stage_name", "mpi", "pdb", "cprofile", "memmon",
     "trace", "resume", "log_dir", "output_dir", "threads_per_process", "nprocess"}
)


# rail.utils.interactive.base_utils.GLOBAL_INTERACTIVE_PARAMETERS (rail_base 2.0.11)
_INTERACTIVE_KEYS = frozenset({"output_mode", "force_exact"})


class _PhotoVAEzStageMixin:
    """Strict configuration (unknown keys are errors) and table helpers for both stages."""

    _global_config_keys: frozenset = frozenset()

    def read_config(self, args: Any) -> None:
        """ceci's config reading, also remembering the keys of the config file's ``global``
        section (shared by every stage of a pipeline, so not ours to reject)."""
        super().read_config(args)  # type: ignore[misc]
        config_file = self.get_input("config")  # type: ignore[attr-defined]
        overall: Any = {}
        if isinstance(config_file, dict):
            overall = config_file
        elif config_file not in (None, "None", "none", "") and os.path.isfile(str(config_file)):
            import yaml
            from ceci.pipeline.templates import read_and_apply_template

            overall = yaml.safe_load(read_and_apply_template(config_file)) or {}
        glob = overall.get("global", {}) if isinstance(overall, dict) else {}
        self._global_config_keys = frozenset(glob or {})

    def _check_config_keys(self) -> None:
        known = set(self.config_options)  # type: ignore[attr-defined]
        ignored = set(_FRAMEWORK_KEYS) | set(self._global_config_keys)
        for tag in list(self.input_tags()) + list(self.output_tags()):  # type: ignore[attr-defined]
            ignored.add(tag)
            ignored.add(self.get_aliased_tag(tag))  # type: ignore[attr-defined]
        ignored.update(self.get_aliases().values())  # type: ignore[attr-defined]
        # rail.interactive passes its global parameters and the entrypoint's arguments
        # (e.g. training_data) to make_stage as well
        ignored.update(_INTERACTIVE_KEYS)
        entry = getattr(type(self), getattr(self, "entrypoint_function", "") or "", None)
        if entry is not None:
            ignored.update(inspect.signature(entry).parameters)
        unknown = sorted(k for k in self.config.keys() if k not in known and k not in ignored)  # type: ignore[attr-defined]
        if unknown:
            msgs = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                msgs.append(f"{key!r}{hint}")
            raise ValueError(
                f"{self.name}: unknown configuration option(s) {', '.join(msgs)}; "  # type: ignore[attr-defined]
                f"known options are {sorted(known)}"
            )

    def _table(self, data: Any) -> Any:
        """The table inside ``data``: its ``hdf5_groupname`` group when there is one."""
        group = self.config.hdf5_groupname  # type: ignore[attr-defined]
        if group and hasattr(data, "keys") and group in data.keys():
            return data[group]
        return data

    def _optional_input(self, tag: str) -> Any:
        """Data of an optional input tag, or None when it was not given."""
        handle = self.get_handle(tag, allow_missing=True)  # type: ignore[attr-defined]
        if handle.has_data:
            return handle.data
        if handle.path in (None, "None", "none", ""):
            return None
        return handle.read()


def _params_from(config_cls: type, defaults: dict | None = None) -> dict[str, Param]:
    """One stage option per user-facing field of a core configuration dataclass
    (:func:`photovaez.config.options`): its type, default (or ``defaults[name]``) and help."""
    defaults = defaults or {}
    return {o.name: Param(o.type, defaults.get(o.name, o.default), msg=o.help) for o in options(config_cls)}


def _config_from(config_cls: type, config: Any) -> Any:
    """The core configuration dataclass filled from a stage's config (its fields by name)."""
    return config_cls.from_dict({o.name: config[o.name] for o in options(config_cls)})


def _n_rows(table: Any) -> int:
    for key in table.keys():
        return len(table[key])
    return 0


def _stage_error(stage: Any, exc: BaseException) -> BaseException:
    """The same exception type with the stage name in front of the message."""
    msg = exc.args[0] if exc.args else str(exc)
    try:
        return type(exc)(f"{stage.name}: {msg}")
    except Exception:  # pragma: no cover - exotic exception signatures
        return exc


def feature_spec_from_config(config: Any, stage_name: str = "PhotoVAEz") -> Any:
    """Build the :class:`photovaez.features.FeatureSpec` that a stage configuration describes.

    ``feature_preset`` (``lsst``, ``sdss_mgs``, ``sdss_wise``) takes its columns, colours, extra
    columns and limits from the preset; otherwise they come from ``bands``, ``err_bands``,
    ``colours`` (``[]`` = adjacent bands), ``extra_cols`` and ``mag_limits``.  ``nondetect_val``,
    ``nondetect_err`` (and, without a preset, ``replace_error_vals``) always come from the config.
    """
    from photovaez.features import FeatureSpec, preset, spec_with

    colours = [list(c) for c in (config.colours or [])]
    for c in colours:
        if len(c) != 2:
            raise ValueError(f"{stage_name}: each entry of colours must be a [blue, red] pair of band names, got {c!r}")
    nondetect_val = float(config.nondetect_val) if config.nondetect_val is not None else float("nan")
    if config.feature_preset:
        spec = preset(config.feature_preset)
        changes: dict[str, Any] = dict(nondetect_val=nondetect_val, nondetect_err=float(config.nondetect_err))
        if colours:
            changes["colours"] = colours
        if config.extra_cols:
            changes["extra_cols"] = list(config.extra_cols)
        if config.only_ref_mag:
            if config.ref_band not in spec.bands:
                raise ValueError(f"{stage_name}: ref_band {config.ref_band!r} is not one of the bands of preset "
                                 f"{config.feature_preset!r}: {spec.bands}")
            changes["mag_features"] = [config.ref_band]
        return spec_with(spec, **changes)
    bands = list(config.bands)
    if config.ref_band not in bands:
        raise ValueError(f"{stage_name}: ref_band {config.ref_band!r} is not one of bands={bands}")
    limits = dict(config.mag_limits or {})
    missing = [b for b in bands if b not in limits]
    if missing:
        raise ValueError(
            f"{stage_name}: mag_limits has no limiting magnitude for {missing}; give mag_limits as a "
            "dict {band column: limit} covering every band (used to replace non-detections)"
        )
    return FeatureSpec(
        bands=bands,
        err_bands=list(config.err_bands),
        mag_features=[config.ref_band] if config.only_ref_mag else None,
        colours=colours or None,
        extra_cols=list(config.extra_cols or []),
        mag_limits={b: float(limits[b]) for b in bands},
        nondetect_val=nondetect_val,
        nondetect_err=float(config.nondetect_err),
        replace_error_vals=list(config.replace_error_vals) if config.replace_error_vals else None,
    )


# --------------------------------------------------------------------------------------------
# informer


class PhotoVAEzInformer(_PhotoVAEzStageMixin, CatInformer):
    """Train PhotoVAEz (a semi-supervised Skip Deep Generative Model) for photo-z estimation.

    Inputs: ``input``, the training table (rows with a redshift that is NaN or <= 0 are used as
    unlabelled galaxies), and the optional ``unlabeled`` table of photometry without redshifts.
    Output: ``model``, the plain-data model file (:class:`PhotoVAEzModelHandle`).
    """

    name = "PhotoVAEzInformer"
    entrypoint_function = "inform"
    interactive_function = "photovaez_informer"
    config_options = CatInformer.config_options.copy()
    config_options.update(
        bands=SHARED_PARAMS,
        err_bands=SHARED_PARAMS,
        ref_band=SHARED_PARAMS,
        mag_limits=SHARED_PARAMS,
        nondetect_val=SHARED_PARAMS,
        redshift_col=SHARED_PARAMS,
        replace_error_vals=SHARED_PARAMS,
        feature_preset=Param(str, "", msg="named feature set (lsst, sdss_mgs, sdss_wise); '' = build the "
                             "features from bands/err_bands/colours/extra_cols"),
        colours=Param(list, [], msg="colour features as [blue, red] pairs of band columns; [] = adjacent bands"),
        extra_cols=Param(list, [], msg="further columns that enter the features unchanged (e.g. an extinction)"),
        only_ref_mag=Param(bool, False, msg="use only the ref_band magnitude (plus colours) instead of every "
                           "band's magnitude"),
        nondetect_err=Param(float, 1.0, msg="magnitude error given to a non-detection placed at its limit"),
        **_params_from(ModelConfig),
        **_params_from(TrainConfig, defaults={"progress": False}),  # no progress bar in pipeline logs
    )
    inputs = [("input", TableHandle), ("unlabeled", TableHandle)]
    outputs = [("model", PhotoVAEzModelHandle)]

    def __init__(self, args: Any, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._check_config_keys()
        self.feature_spec = feature_spec_from_config(self.config, self.name)
        try:  # checked now, not after reading the data
            self.model_config = _config_from(ModelConfig, self.config)
            self.train_config = _config_from(TrainConfig, self.config)
        except ValueError as exc:
            raise _stage_error(self, exc) from exc

    def inform(self, training_data: TableLike, unlabeled_data: TableLike | None = None, **kwargs: Any) -> ModelHandle:
        """Train PhotoVAEz on labelled (and optionally unlabelled) photometry.

        Parameters
        ----------
        training_data : TableLike
            Training table (dict of arrays, DataFrame, a ``TableHandle`` or the path of an hdf5 /
            parquet file) with the feature columns and ``redshift_col``.  Rows whose redshift is
            NaN or <= 0 are used as unlabelled galaxies.  With ``stream_chunk_size`` > 0, files
            (this one and ``unlabeled_data``) are streamed chunk by chunk instead of read whole
            (:func:`photovaez.api.fit_streaming`).
        unlabeled_data : TableLike, optional
            Photometry without redshifts (any redshift column is ignored), used as unlabelled
            galaxies in the semi-supervised loss.  A path is read as a table.  ``None`` or
            ``"none"`` means no unlabelled table (``rail.interactive`` treats every ceci input
            as required, so pass ``unlabeled_data="none"`` there).
        **kwargs : Any
            Unused; accepted for RAIL's interactive interface.

        Returns
        -------
        PhotoVAEzModelHandle
            Handle of the trained model (a plain dict; see :mod:`photovaez.io`).
        """
        lazy = int(self.config.stream_chunk_size) > 0  # files are streamed by run(), not read here
        if isinstance(training_data, (str, os.PathLike)):
            self.set_data("input", None, path=os.fspath(training_data), do_read=not lazy)
        else:
            self.set_data("input", training_data)
        if isinstance(unlabeled_data, str) and unlabeled_data.strip().lower() in ("", "none"):
            unlabeled_data = None
        if isinstance(unlabeled_data, (str, os.PathLike)):
            self.set_data("unlabeled", None, path=os.fspath(unlabeled_data), do_read=not lazy)
        elif unlabeled_data is not None:
            self.set_data("unlabeled", unlabeled_data)
        self.validate()
        self.run()
        self.finalize()
        return self.get_handle("model")

    def _stream_paths(self) -> tuple[str, str | None] | None:
        """The files of ``input`` and ``unlabeled`` when they are to be streamed
        (``stream_chunk_size`` > 0 and ``input`` is a file not yet read into memory), else None."""
        if int(self.config.stream_chunk_size) <= 0:
            return None
        paths = []
        for tag in ("input", "unlabeled"):
            handle = self.get_handle(tag, allow_missing=True)
            path = None if handle is None or handle.path in (None, "None", "none", "") else os.fspath(handle.path)
            if handle is not None and handle.has_data and handle.data is not None:
                path = None  # already in memory
            paths.append(path)
        if paths[0] is None:
            self.log.warning(f"{self.name}: stream_chunk_size is set but the input is not a file (it was given in "
                             "memory): training from memory")
            return None
        unl = self.get_handle("unlabeled", allow_missing=True)
        if paths[1] is None and unl is not None and unl.has_data and unl.data is not None:
            self.log.warning(f"{self.name}: stream_chunk_size is set but unlabeled was given in memory: training "
                             "from memory")
            return None
        return paths[0], paths[1]

    def run(self) -> None:
        from photovaez.api import fit, fit_streaming
        from rail.photovaez.data import rail_resolver

        paths = self._stream_paths()
        if paths is not None:
            try:
                self.model = fit_streaming(paths[0], paths[1], spec=self.feature_spec, model_config=self.model_config,
                                           train_config=self.train_config, redshift_col=self.config.redshift_col,
                                           resolve=rail_resolver, group=self.config.hdf5_groupname or "")
            except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
                raise _stage_error(self, exc) from exc
            self._log_report()
            self.add_data("model", self.model)
            return
        training = self._table(self.get_data("input"))
        unlabeled = self._optional_input("unlabeled")
        if unlabeled is not None:
            unlabeled = self._table(unlabeled)
        try:
            self.model = fit(
                training,
                unlabeled,
                spec=self.feature_spec,
                model_config=self.model_config,
                train_config=self.train_config,
                redshift_col=self.config.redshift_col,
                resolve=rail_resolver,
            )
        except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
            raise _stage_error(self, exc) from exc
        self._log_report()
        self.add_data("model", self.model)

    def _log_report(self) -> None:
        report = self.model.get("report", {})
        self.log.info(
            f"{self.name}: trained on {report.get('n_labelled')} labelled and {report.get('n_unlabelled')} "
            f"unlabelled galaxies, {report.get('epochs_run')} epochs, "
            f"{report.get('n_skipped')}/{report.get('n_steps')} steps skipped"
        )


# --------------------------------------------------------------------------------------------
# estimator


class PhotoVAEzEstimator(_PhotoVAEzStageMixin, CatEstimator):
    """Photo-z PDFs from a trained PhotoVAEz model on ``linspace(zmin, zmax, nzbins)``.

    ``posterior`` picks the estimator, one of :data:`photovaez.estimation.MODES`:

    * ``amortized`` (default): q(z|x), a mixture of ``n_b_samples`` log-normals q(z|b_k, x),
      b_k ~ q(b|x); the b draws are fixed by ``seed`` and shared by all galaxies.
    * ``grid``: the model's posterior p(z|x) from the importance-sampled log p(x, z)
      (``n_importance`` samples, networks run in JAX), normalised exactly on the grid.
    * ``hmc``: NumPyro NUTS in log z on the same log p(x, z), one chain per galaxy; the samples
      become a PDF by a Gaussian KDE in log z.
    * ``snis``: self-normalised importance sampling of (z, a, b) from the encoder.

    A galaxy's PDF does not depend on the chunk (or MPI rank) it is estimated in: posterior-mode
    draws are keyed by the galaxy's row index.  Ancil: ``zmode``, ``zmean``, ``zmedian``,
    ``n_nondetect`` (bands replaced by their limit), ``n_bad_error`` (bands whose bad error was
    replaced), ``pdf_flag`` (0 fine, 1 no finite PDF: flat PDF returned, 2 every band a
    non-detection); the posterior modes add ``log_px`` (IWAE
    log p(x), low = unlike the training data) and ``kish_ess``; ``grid`` adds ``ess_at_mode``,
    ``hmc`` adds ``divergences`` and ``ess``.
    """

    name = "PhotoVAEzEstimator"
    entrypoint_function = "estimate"
    interactive_function = "photovaez_estimator"
    config_options = CatEstimator.config_options.copy()
    config_options.update(
        **_params_from(EstimateConfig),
    )
    inputs = [("model", PhotoVAEzModelHandle), ("input", TableHandle)]
    outputs = CatEstimator.outputs

    def __init__(self, args: Any, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._check_config_keys()
        from photovaez.estimation import resolve_mode
        from photovaez.grid import redshift_grid

        try:
            self.estimate_config = _config_from(EstimateConfig, self.config)
            self.mode = resolve_mode(self.estimate_config.posterior)
            self.zgrid = redshift_grid(self.config.zmin, self.config.zmax, self.config.nzbins)
        except ValueError as exc:
            raise _stage_error(self, exc) from exc
        self._predictor: Any = None
        self._predictor_source: Any = None

    @classmethod
    def default_distribution_type(cls) -> DistributionType:
        return DistributionType.posterior

    def open_model(self, tag: str = "model", **kwargs: Any) -> Any:
        """Attach the model: a model dict, a path to a model file or a model handle.

        The model is validated (format, version, keys, state shapes) and turned into a cached
        :class:`photovaez.api.Predictor`.
        """
        from photovaez.api import load_predictor

        model = kwargs.get(tag)
        if model is None or (isinstance(model, str) and model in ("None", "none", "")):
            raise ValueError(f"{self.name}: no model given (set model= to a model file, handle or dict)")
        if isinstance(model, dict):
            # a model dict in memory: RAIL would use the dict itself as the handle's "path"
            self.add_handle(tag, data=model, path="None")
            self.model = model
        else:
            super().open_model(tag, **kwargs)
        if self._predictor is None or self._predictor_source is not self.model:
            try:
                self._predictor = load_predictor(self.model)
            except (KeyError, ValueError, TypeError) as exc:
                raise _stage_error(self, exc) from exc
            self._predictor_source = self.model
        return self.model

    def _device(self) -> str:
        """The device the estimation runs on (JAX): ``device``, with ``auto`` = a GPU if JAX has
        one (under MPI GPU rank % n_gpus), else the CPU (:func:`photovaez.amortised.jax_device`)."""
        from photovaez.amortised import jax_device

        dev = jax_device(self.config.device, rank=self.rank if self.size > 1 else None)
        return "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}"

    def _initialize_run(self) -> None:
        super()._initialize_run()
        self._run_device = self._device()
        # RAIL's run() calls gc.collect() after every chunk; with torch, JAX and RAIL imported a
        # full collection walks millions of long-lived objects (~0.25 s each time).  Freezing them
        # for the run (gc.freeze) leaves those collections only the chunks' own objects.
        gc.freeze()

    def input_iterator(self, tag: str, **kwargs: Any) -> Any:
        """RAIL's iterator, except for an input file with fewer chunks than processes (an empty
        file included): rail_base 2.0.11 then logs with a broken structlog call (TypeError) and,
        for an empty file, sets chunk_size to 0.  Here an empty file gives no chunks (an empty
        ensemble is written by :meth:`_finalize_run`) and the chunk size is reduced as RAIL means to."""
        handle = self.get_handle(tag, allow_missing=True)
        if handle.path in (None, "None", "none"):
            if handle.data is None:
                return []
            # in memory: one chunk; the hdf5_groupname group if the data has it, else the table
            table = self._table(handle.data)
            self._input_length = _n_rows(table)
            self.config.chunk_size = max(self._input_length, 1)
            return [[0, self._input_length, table]]
        groupname = kwargs.get("groupname", self.config.hdf5_groupname)
        chunk_size = int(kwargs.get("chunk_size", self.config.chunk_size))
        n_rows = int(handle.size(groupname=groupname))
        self._input_length = n_rows
        if n_rows == 0:
            return []
        if math.ceil(n_rows / chunk_size) < self.size:
            chunk_size = int(math.ceil(n_rows / self.size))
            self.config.chunk_size = chunk_size
            self.log.warning(f"more processes than chunks: chunk size reduced to {chunk_size}")
        kwcopy = dict(groupname=groupname, chunk_size=chunk_size, rank=self.rank, parallel_size=self.size)
        kwcopy.update(**kwargs)
        kwcopy["chunk_size"] = chunk_size
        return handle.iterator(**kwcopy)

    def _process_chunk(self, start: int, end: int, data: Any, first: bool) -> None:
        import qp

        from photovaez.api import estimate
        from photovaez.estimation import estimate_arguments

        table = self._table(data)
        try:
            pdfs, ancil = estimate(self._predictor, table, self.zgrid, index_offset=start, device=self._run_device,
                                   **estimate_arguments(self.mode, self.estimate_config))
        except (KeyError, ValueError, TypeError) as exc:
            gc.unfreeze()
            raise _stage_error(self, exc) from exc
        # the PDFs are normalised already (photovaez.grid.normalise): qp need not do it again
        ens = qp.Ensemble(qp.interp, data=dict(xvals=self.zgrid, yvals=pdfs, norm=False))
        ens.set_ancil(ancil)
        self._do_chunk_output(ens, start, end, first, data=table)

    def _finalize_run(self) -> None:
        try:
            if self._output_handle is None:
                # no chunk at all (an empty input table): write an empty ensemble
                self._process_chunk(0, 0, self._empty_table(), True)
            super()._finalize_run()
        finally:
            gc.unfreeze()

    def _empty_table(self) -> dict:
        spec = self._predictor.spec
        return {c: np.zeros(0) for c in spec.columns}
