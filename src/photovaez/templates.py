"""Rest-frame SED templates: RAIL's ``SED/*.sed`` files and ``.list`` files of them, or a user's own.

A template is an :class:`SED`, plain data: a name, rest-frame wavelengths in Angstrom
(increasing) and f_lambda (arbitrary units, >= 0).  Synthetic photometry
(``photovaez.synphot``) interpolates f_lambda linearly between the tabulated points and takes it
as zero outside them.

Template sets are named like filters (``photovaez.filters``): a path, or
``"rail:<path inside RAIL's package data>"`` turned into a path by a resolver function
(``rail.photovaez.data.rail_resolver``); :data:`TEMPLATE_PRESETS` names RAIL's two sets,
``cwwsb4`` (``CWWSB4.list``: 8 templates, El, Sbc, Scd, Im, SB3, SB2 and two SSPs, BPZ's
default) and ``cosmos`` (``COSMOS_seds.list``: the 31 templates of the COSMOS photo-z work).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .filters import Resolver, check_tabulated, read_two_columns, resolve_path

__all__ = ["SED", "TEMPLATE_PRESETS", "read_sed_file", "read_sed_list", "load_templates"]

_RAIL_SEDS = "rail:examples_data/estimation_data/data/SED/"

TEMPLATE_PRESETS: dict[str, str] = {
    "cwwsb4": f"{_RAIL_SEDS}CWWSB4.list",
    "cosmos": f"{_RAIL_SEDS}COSMOS_seds.list",
}
"""Named template sets: the spec of a ``.list`` file of each."""


class SED(NamedTuple):
    """A rest-frame spectral energy distribution.

    Attributes
    ----------
    name : str
        The template's name (its file's stem, e.g. ``"El_B2004a"``).
    wavelength : numpy.ndarray
        (n,) rest-frame wavelengths in Angstrom, strictly increasing, >= 0.
    flux : numpy.ndarray
        (n,) f_lambda at ``wavelength`` in arbitrary units, >= 0 and not all zero.
    """

    name: str
    wavelength: np.ndarray
    flux: np.ndarray


def read_sed_file(path: str | os.PathLike[str], name: str | None = None) -> SED:
    """A template from a two-column text file: rest-frame wavelength in Angstrom, f_lambda.

    Parameters
    ----------
    path : str or path-like
        The file (RAIL's ``SED/*.sed`` files have this form); ``#`` starts a comment.
    name : str, optional
        The template's name; default the file's name without its extension.

    Returns
    -------
    SED
        Rows of equal wavelength are merged into one, their mean f_lambda (the COSMOS files
        repeat 10000 Angstrom with the same value).

    Raises
    ------
    ValueError
        Naming the file: rows that are not two numbers, decreasing or negative wavelengths, a
        negative f_lambda, f_lambda zero everywhere (:func:`photovaez.filters.check_tabulated`).
    """
    path = os.fspath(path)
    wavelength, flux = read_two_columns(path, "SED file")
    repeated = np.diff(wavelength) == 0
    if np.any(repeated):  # merge runs of one wavelength into their mean (a decrease is still an error)
        group = np.concatenate([[0], np.cumsum(~repeated)])
        wavelength = wavelength[np.concatenate([[True], ~repeated])]
        flux = np.bincount(group, flux) / np.bincount(group)
    wavelength, flux = check_tabulated(wavelength, flux, f"SED file {path}", "f_lambda", zero_wavelength=True)
    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
    return SED(name, wavelength, flux)


def read_sed_list(path: str | os.PathLike[str]) -> list[SED]:
    """The templates that a ``.list`` file names, one ``.sed`` file a line.

    Parameters
    ----------
    path : str or path-like
        The list (RAIL's ``CWWSB4.list``, ``COSMOS_seds.list``, or a user's own); each non-blank
        line names a file relative to the list's folder (or an absolute path); ``#`` starts a
        comment.

    Returns
    -------
    list of SED
        In the list's order.

    Raises
    ------
    ValueError
        An empty list, or a listed file that does not exist (naming the list and the entry).
    """
    path = os.fspath(path)
    folder = os.path.dirname(path)
    with open(path) as fh:
        entries = [line.split("#", 1)[0].strip() for line in fh]
    entries = [e for e in entries if e]
    if not entries:
        raise ValueError(f"SED list {path}: names no template files")
    seds = []
    for entry in entries:
        file = os.path.join(folder, entry)
        if not os.path.isfile(file):
            raise ValueError(f"SED list {path}: the listed file {entry!r} does not exist ({file})")
        seds.append(read_sed_file(file))
    return seds


def load_templates(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | SED],
                   resolve: Resolver | None = None) -> list[SED]:
    """A set of templates from a preset name, a ``.list`` or ``.sed`` file, or a list of them.

    Parameters
    ----------
    spec : str, path-like or sequence
        A name of :data:`TEMPLATE_PRESETS` (``"cwwsb4"``, ``"cosmos"``); the path (or
        ``"rail:<path>"``) of a ``.list`` file (:func:`read_sed_list`) or of one SED file
        (:func:`read_sed_file`); or a sequence of :class:`SED` and SED file paths.
    resolve : callable, optional
        Resolver of ``"rail:"`` specs (``rail.photovaez.data.rail_resolver``; the presets need one).

    Returns
    -------
    list of SED
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = TEMPLATE_PRESETS.get(os.fspath(spec), spec)
        path = resolve_path(spec, resolve)
        if not os.path.isfile(path):
            raise ValueError(f"templates {os.fspath(spec)!r}: no such file ({path}), and not a preset "
                             f"name (one of {sorted(TEMPLATE_PRESETS)})")
        return read_sed_list(path) if path.endswith(".list") else [read_sed_file(path)]
    return [s if isinstance(s, SED) else read_sed_file(resolve_path(s, resolve)) for s in spec]
