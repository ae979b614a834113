"""Observation rows: what the encoder reads and what the decoder explains, side by side.

The encoder networks read the D_x standardised features x (:mod:`photovaez.features`).  The
decoder of ``decoder = "mlp"`` explains the same x; the physics decoder (``decoder = "sed"``)
explains the band fluxes with their errors instead, and the ``bpz`` prior p(z | m_ref) needs the
reference magnitude.  One observation row holds all of it::

    obs = [x (D_x) | flux (n_bands), flux_err (n_bands)  (sed) | m_ref  (bpz)]

so that every function of the model (torch and the JAX export) takes one array per galaxy.  The
decoder columns are the catalogue's measurements: they are not resampled in training (the
flux-space likelihood already carries the errors; the resampling augments the encoder's x).

Fluxes are in the unit of :func:`photovaez.flux_likelihood.magnitudes_to_fluxes` (nanomaggies);
a non-detection is the measurement 0 +- limit flux / ``nondetect_sigma``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .config import ModelConfig
from .features import FeatureSpec, Photometry
from .flux_likelihood import magnitudes_to_fluxes

__all__ = ["DecoderColumns", "reference_band", "decoder_columns", "observation_rows", "split_observation"]

_I_BAND = re.compile(r"(^|[_\W])i($|[_\W])")


def reference_band(bands: Sequence[str], prior_band: str = "") -> int:
    """The index of the reference band m_ref among ``bands``.

    Parameters
    ----------
    bands
        The magnitude columns of the feature spec.
    prior_band
        A column name of ``bands``; ``""`` = the i band: the one column named ``i`` or with ``i``
        as a ``_``-separated word (``mag_i_lsst``, ``modelMag_i``).

    Raises
    ------
    ValueError
        ``prior_band`` is not a band, or no band looks like i.
    """
    bands = list(bands)
    if prior_band:
        if prior_band not in bands:
            raise ValueError(f"ModelConfig.prior_band: {prior_band!r} is not one of the bands {bands}")
        return bands.index(prior_band)
    found = [k for k, b in enumerate(bands) if _I_BAND.search(b)]
    if found:  # sdss_wise lists model magnitudes before psf ones: the first i band wins
        return found[0]
    raise ValueError(f"ModelConfig.prior_band: no band of {bands} is named like i; set prior_band to the column of "
                     "the reference magnitude")


class DecoderColumns(NamedTuple):
    """The decoder's columns of an observation row, split (see the module docstring).

    ``flux`` and ``flux_err`` are (..., n_bands) or None (mlp decoder); ``m_ref`` is (...) or None
    (lognormal prior).
    """

    flux: Any
    flux_err: Any
    m_ref: Any


def decoder_columns(phot: Photometry, spec: FeatureSpec, config: ModelConfig) -> np.ndarray:
    """The (N, ``config.n_decoder_columns``) decoder columns of cleaned photometry.

    Parameters
    ----------
    phot
        :func:`photovaez.features.clean_photometry` of the table.
    spec
        Its feature spec (band limits).
    config
        The model's settings (decoder, prior, prior_band, nondetect_sigma).
    """
    parts = []
    if config.decoder == "sed":
        limits = [spec.limit(b) for b in spec.bands]
        flux, flux_err = magnitudes_to_fluxes(phot.mags, phot.errs, phot.nondetect, limits,
                                              n_sigma_limit=config.nondetect_sigma)
        parts += [flux, flux_err]
    if config.prior == "bpz":
        parts.append(phot.mags[:, reference_band(spec.bands, config.prior_band)][:, None])
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(phot), 0))


def observation_rows(x: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``[x | columns]``: features (N, D_x) and :func:`decoder_columns` (N, k) as one (N, D_x + k) array."""
    return np.concatenate([np.asarray(x, np.float64), np.asarray(columns, np.float64)], axis=1)


def split_observation(obs: Any, config: Any) -> tuple[Any, DecoderColumns]:
    """``(x, DecoderColumns)`` of observation rows (numpy, torch or JAX arrays, (..., dim_obs)).

    ``config`` is a :class:`~photovaez.config.ModelConfig` or anything with ``dim_x``, ``n_bands``,
    ``decoder`` and ``prior`` (the JAX export's static settings).
    """
    d, nb = config.dim_x, config.n_bands
    x = obs[..., :d]
    flux = flux_err = m_ref = None
    k = d
    if config.decoder == "sed":
        flux, flux_err = obs[..., k:k + nb], obs[..., k + nb:k + 2 * nb]
        k += 2 * nb
    if config.prior == "bpz":
        m_ref = obs[..., k]
    return x, DecoderColumns(flux, flux_err, m_ref)
