"""Input features: which catalogue columns the model sees, and how they become ``x``.

Every feature PhotoVAEz uses is *linear* in the catalogue's magnitudes and extra columns
(a magnitude, a colour ``m_i - m_j``, an extinction, ...).  A :class:`FeatureSpec` is therefore
turned into one matrix ``A`` with ``x_raw = v @ A`` where ``v = [m_1..m_B, e_1..e_E]`` holds the
magnitudes and the extra columns.  Standardisation is a further affine map, so the whole
column -> ``x`` transformation is ``x = v @ W + c`` (:func:`affine_map`).  The same map serves
numpy, PyTorch and JAX, and resampling magnitudes from their errors recomputes every colour
for free: resample ``v``, apply the map.

Non-detections follow RAIL's convention: a magnitude equal to ``nondetect_val`` (or NaN, +-inf,
or a sentinel such as 99 / -99 / -9999, i.e. ``|m| >= sentinel_abs``) is replaced by the band's
limiting magnitude, with error ``nondetect_err``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Config

__all__ = [
    "FeatureSpec",
    "Photometry",
    "Scaler",
    "clean_photometry",
    "feature_matrix",
    "feature_names",
    "fit_scaler",
    "affine_map",
    "features",
    "preset",
    "PRESETS",
]

LSST_BANDS = [f"mag_{b}_lsst" for b in "ugrizy"]
LSST_ERR_BANDS = [f"mag_err_{b}_lsst" for b in "ugrizy"]
# RAIL's shared defaults (rail.core.common_params), the 10-year 5-sigma depths of DC2.
LSST_MAG_LIMITS = dict(zip(LSST_BANDS, [27.79, 29.04, 29.06, 28.62, 27.98, 27.05]))


def adjacent_colours(bands: Sequence[str]) -> list[list[str]]:
    """Colours of neighbouring bands, ``[[b0, b1], [b1, b2], ...]``."""
    return [[a, b] for a, b in zip(bands[:-1], bands[1:])]


@dataclass
class FeatureSpec(Config):
    """Which columns form the model input ``x``.

    Parameters
    ----------
    bands
        Magnitude columns, in wavelength order.
    err_bands
        The error column of each magnitude (same order and length as ``bands``).
    mag_features
        Bands that enter ``x`` as magnitudes (default: all of ``bands``).
    colours
        Colour features as ``[blue, red]`` band-name pairs (``m_blue - m_red``).  ``None`` means
        the adjacent colours of ``bands``.
    extra_cols
        Further columns that enter ``x`` unchanged (e.g. an extinction).  They are not resampled.
    mag_limits
        Limiting magnitude of each band, used for non-detections.  Bands not listed get
        ``default_mag_limit``.
    nondetect_val
        The catalogue's non-detection value (RAIL's ``nondetect_val``; NaN allowed).
    nondetect_err
        Magnitude error given to a non-detection placed at the limit.
    sentinel_abs
        Magnitudes with ``|m| >= sentinel_abs`` (99, -99, -9999, ...) count as non-detections.
    replace_error_vals
        Error used where a detected magnitude's error is missing, non-finite or <= 0 (one per band).
    max_mag_err
        Errors are clipped to this value.
    """

    bands: list[str] = field(default_factory=lambda: list(LSST_BANDS))
    err_bands: list[str] = field(default_factory=lambda: list(LSST_ERR_BANDS))
    mag_features: list[str] | None = None
    colours: list[list[str]] | None = None
    extra_cols: list[str] = field(default_factory=list)
    mag_limits: dict[str, float] = field(default_factory=lambda: dict(LSST_MAG_LIMITS))
    default_mag_limit: float = 28.0
    nondetect_val: float = 99.0
    nondetect_err: float = 1.0
    sentinel_abs: float = 90.0
    replace_error_vals: list[float] | None = None
    max_mag_err: float = 2.0

    def __post_init__(self) -> None:
        self.bands = list(self.bands)
        self.err_bands = list(self.err_bands)
        if len(self.bands) == 0:
            raise ValueError("FeatureSpec.bands: at least one magnitude column is needed")
        if len(self.err_bands) != len(self.bands):
            raise ValueError(
                f"FeatureSpec.err_bands: expected {len(self.bands)} error columns (one per band in "
                f"bands={self.bands}), got {len(self.err_bands)}: {self.err_bands}"
            )
        if self.mag_features is None:
            self.mag_features = list(self.bands)
        if self.colours is None:
            self.colours = adjacent_colours(self.bands)
        self.colours = [list(c) for c in self.colours]
        self.extra_cols = list(self.extra_cols)
        for name in self.mag_features:
            if name not in self.bands:
                raise ValueError(f"FeatureSpec.mag_features: {name!r} is not one of bands={self.bands}")
        for pair in self.colours:
            if len(pair) != 2 or any(p not in self.bands for p in pair):
                raise ValueError(
                    f"FeatureSpec.colours: each colour must be a pair of names from bands={self.bands}, "
                    f"got {pair!r}"
                )
        if self.replace_error_vals is None:
            self.replace_error_vals = [0.1] * len(self.bands)
        self.replace_error_vals = [float(v) for v in self.replace_error_vals]
        if len(self.replace_error_vals) != len(self.bands):
            raise ValueError(
                f"FeatureSpec.replace_error_vals: expected {len(self.bands)} values, got "
                f"{len(self.replace_error_vals)}"
            )
        self.mag_limits = {str(k): float(v) for k, v in dict(self.mag_limits).items()}
        if self.dim == 0:
            raise ValueError("FeatureSpec: no features (mag_features, colours and extra_cols are all empty)")

    @property
    def dim(self) -> int:
        """Number of features D_x."""
        return len(self.mag_features) + len(self.colours) + len(self.extra_cols)

    @property
    def columns(self) -> list[str]:
        """Every catalogue column the features need."""
        return list(self.bands) + list(self.err_bands) + list(self.extra_cols)

    def limit(self, band: str) -> float:
        return float(self.mag_limits.get(band, self.default_mag_limit))


@dataclass
class Photometry:
    """Cleaned catalogue columns of N galaxies.

    ``mags`` and ``errs`` are (N, B); ``extras`` is (N, E); ``nondetect`` (N, B) marks the bands
    that were replaced by their limit; ``bad_error`` (N, B) the detected bands whose error was
    missing, non-finite or <= 0 and was replaced by ``replace_error_vals``.
    """

    mags: np.ndarray
    errs: np.ndarray
    extras: np.ndarray
    nondetect: np.ndarray
    bad_error: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.bad_error is None:
            self.bad_error = np.zeros(self.nondetect.shape, bool)

    def __len__(self) -> int:
        return self.mags.shape[0]

    @property
    def values(self) -> np.ndarray:
        """``v = [mags, extras]`` (N, B + E), the vector the feature map acts on."""
        return np.concatenate([self.mags, self.extras], axis=1)

    def subset(self, idx: np.ndarray) -> Photometry:
        return Photometry(self.mags[idx], self.errs[idx], self.extras[idx], self.nondetect[idx], self.bad_error[idx])

    @staticmethod
    def concatenate(parts: list[Photometry]) -> Photometry:
        """The rows of several tables, in order."""
        return Photometry(*(np.concatenate(arrays) for arrays in zip(
            *((p.mags, p.errs, p.extras, p.nondetect, p.bad_error) for p in parts))))


def _column(table: Mapping[str, Any], name: str, what: str) -> np.ndarray:
    if name not in table:
        avail = list(table.keys())
        shown = avail if len(avail) <= 30 else avail[:30] + ["..."]
        raise KeyError(f"column {name!r} ({what}) is missing from the input table; its columns are {shown}")
    col = np.asarray(table[name])
    if col.ndim != 1:
        raise ValueError(f"column {name!r} ({what}) must be one-dimensional, got shape {col.shape}")
    if col.dtype.kind not in "fiu":  # strings, bytes, objects, booleans: refused, never guessed
        raise TypeError(f"column {name!r} ({what}) must hold numbers (float or integer), got dtype {col.dtype} "
                        f"(e.g. {col[:3]!r})")
    return col.astype(np.float64)


def clean_photometry(table: Mapping[str, Any], spec: FeatureSpec) -> Photometry:
    """Read and clean the columns of ``spec`` from a table (dict of arrays, DataFrame, ...).

    Non-detections (``nondetect_val``, NaN, +-inf, ``|m| >= sentinel_abs``) become the band's
    limiting magnitude with error ``nondetect_err``.  Missing, non-finite or non-positive errors of
    detected bands become ``replace_error_vals``; errors are clipped at ``max_mag_err``.

    Raises
    ------
    KeyError
        A column of the spec is missing (the message names it).
    TypeError
        A column does not hold numbers (strings, bytes, objects and booleans are refused).
    ValueError
        An extra column holds non-finite values.
    """
    n_rows = None
    mags, errs, nd, bad = [], [], [], []
    for i, (band, err_band) in enumerate(zip(spec.bands, spec.err_bands)):
        m = _column(table, band, "magnitude")
        e = _column(table, err_band, f"error of {band}")
        if n_rows is None:
            n_rows = len(m)
        nondetect = ~np.isfinite(m) | (np.abs(m) >= spec.sentinel_abs)
        ndv = spec.nondetect_val
        if ndv is not None and np.isfinite(ndv):
            # float32 catalogues store 99.0 exactly but e.g. 27.5 only to 1e-6
            nondetect |= np.isclose(m, ndv, rtol=0.0, atol=1e-4)
        m = np.where(nondetect, spec.limit(band), m)
        bad_err = ~np.isfinite(e) | (e <= 0) | (np.abs(e) >= spec.sentinel_abs)
        e = np.where(bad_err, spec.replace_error_vals[i], e)
        e = np.where(nondetect, spec.nondetect_err, e)
        e = np.minimum(e, spec.max_mag_err)
        mags.append(m)
        errs.append(e)
        nd.append(nondetect)
        bad.append(bad_err & ~nondetect)
    extras = []
    for name in spec.extra_cols:
        c = _column(table, name, "extra feature")
        not_finite = ~np.isfinite(c)
        if not_finite.any():
            raise ValueError(
                f"column {name!r} (extra feature) has {int(not_finite.sum())} non-finite values "
                f"(first at row {int(np.argmax(not_finite))}); extra columns cannot be imputed"
            )
        extras.append(c)
    n = n_rows or 0
    return Photometry(
        mags=np.stack(mags, axis=1) if mags else np.zeros((n, 0)),
        errs=np.stack(errs, axis=1) if errs else np.zeros((n, 0)),
        extras=np.stack(extras, axis=1) if extras else np.zeros((n, 0)),
        nondetect=np.stack(nd, axis=1) if nd else np.zeros((n, 0), bool),
        bad_error=np.stack(bad, axis=1) if bad else np.zeros((n, 0), bool),
    )


def feature_names(spec: FeatureSpec) -> list[str]:
    """Human-readable names of the D_x features, in order."""
    return (
        list(spec.mag_features)
        + [f"{a}-{b}" for a, b in spec.colours]
        + list(spec.extra_cols)
    )


def feature_matrix(spec: FeatureSpec) -> np.ndarray:
    """The matrix ``A`` with ``x_raw = v @ A``, ``v = [mags, extras]``; shape (B + E, D_x)."""
    nb, ne = len(spec.bands), len(spec.extra_cols)
    idx = {b: i for i, b in enumerate(spec.bands)}
    cols = []
    for name in spec.mag_features:
        c = np.zeros(nb + ne)
        c[idx[name]] = 1.0
        cols.append(c)
    for a, b in spec.colours:
        c = np.zeros(nb + ne)
        c[idx[a]] += 1.0
        c[idx[b]] -= 1.0
        cols.append(c)
    for j in range(ne):
        c = np.zeros(nb + ne)
        c[nb + j] = 1.0
        cols.append(c)
    return np.stack(cols, axis=1)


@dataclass
class Scaler:
    """Standardisation of the raw features, fitted on training data: ``x = (x_raw - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"mean": np.asarray(self.mean, np.float64), "std": np.asarray(self.std, np.float64)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64))


def fit_scaler(phot: Photometry, spec: FeatureSpec) -> Scaler:
    """Fit the standardisation on training photometry (never on the data being estimated)."""
    if len(phot) == 0:
        raise ValueError("cannot fit the feature standardisation on an empty training set")
    raw = phot.values @ feature_matrix(spec)
    std = raw.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return Scaler(raw.mean(axis=0), std)


def affine_map(spec: FeatureSpec, scaler: Scaler) -> tuple[np.ndarray, np.ndarray]:
    """``(W, c)`` with ``x = v @ W + c``: feature construction and standardisation in one map."""
    A = feature_matrix(spec)
    W = A / scaler.std[None, :]
    c = -scaler.mean / scaler.std
    return W, c


def features(phot: Photometry, spec: FeatureSpec, scaler: Scaler) -> np.ndarray:
    """Standardised features ``x`` (N, D_x) of cleaned photometry."""
    W, c = affine_map(spec, scaler)
    return phot.values @ W + c


# --------------------------------------------------------------------------------------------
# presets

SDSS_MGS_BANDS = ["u", "g", "r", "i", "z"]
SDSS_MGS_ERR_BANDS = ["eu", "eg", "er", "ei", "ez"]

# The draft's 23-feature SDSS+WISE set: psf and model magnitudes in ugriz (10), WISE W1 and W2
# (2), the adjacent model colours u-g .. z-W1, W1-W2 (6: u-g, g-r, r-i, i-z, z-W1, W1-W2) and the
# adjacent psf colours (4: u-g, g-r, r-i, i-z), and the i-band extinction (1): 10 + 2 + 6 + 4 + 1 = 23.
SDSS_WISE_PSF = [f"psfMag_{b}" for b in "ugriz"]
SDSS_WISE_MODEL = [f"modelMag_{b}" for b in "ugriz"]
SDSS_WISE_WISE = ["w1mpro", "w2mpro"]


def _lsst() -> FeatureSpec:
    return FeatureSpec()


def _sdss_mgs() -> FeatureSpec:
    # extinction-corrected model magnitudes of ../shared/data/sdss_mgs (no sentinels there)
    return FeatureSpec(
        bands=list(SDSS_MGS_BANDS),
        err_bands=list(SDSS_MGS_ERR_BANDS),
        mag_limits={"u": 22.0, "g": 22.2, "r": 22.2, "i": 21.3, "z": 20.5},
        replace_error_vals=[0.1] * 5,
    )


def _sdss_wise() -> FeatureSpec:
    bands = SDSS_WISE_MODEL + SDSS_WISE_WISE + SDSS_WISE_PSF
    err_bands = [f"{b}_err" for b in SDSS_WISE_MODEL + SDSS_WISE_WISE] + [f"{b}_err" for b in SDSS_WISE_PSF]
    model_chain = SDSS_WISE_MODEL + SDSS_WISE_WISE
    colours = adjacent_colours(model_chain) + adjacent_colours(SDSS_WISE_PSF)
    limits = dict(zip(bands, [22.0, 22.2, 22.2, 21.3, 20.5, 19.6, 19.3, 22.0, 22.2, 22.2, 21.3, 20.5]))
    return FeatureSpec(
        bands=bands,
        err_bands=err_bands,
        mag_features=list(bands),
        colours=colours,
        extra_cols=["extinction_i"],
        mag_limits=limits,
    )


PRESETS = {"lsst": _lsst, "sdss_mgs": _sdss_mgs, "sdss_wise": _sdss_wise}


def preset(name: str) -> FeatureSpec:
    """A named feature set: ``lsst`` (DC2/RAIL columns, 6 magnitudes + 5 colours, D_x = 11),
    ``sdss_mgs`` (the SDSS MGS files: 5 model magnitudes + 4 colours, D_x = 9) or ``sdss_wise``
    (the draft's D_x = 23 set: 10 SDSS psf/model magnitudes, W1, W2, 6 model(+WISE) colours,
    4 psf colours and ``extinction_i``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown feature preset {name!r}; choose one of {sorted(PRESETS)}") from None


def spec_with(spec: FeatureSpec, **changes: Any) -> FeatureSpec:
    """A copy of ``spec`` with some fields replaced (validated again)."""
    d = spec.to_dict()
    d.update(changes)
    return FeatureSpec.from_dict(d)
