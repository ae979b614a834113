"""Filter curves: read from two-column files (RAIL's ``FILTER/*.res``, a user's own) or speclite.

A band is described by a :class:`FilterCurve`, plain data: a name, wavelengths in Angstrom
(strictly increasing) and the photon-counting response (the probability that a photon of that
wavelength is counted; >= 0, not all zero).  Synthetic photometry (``photovaez.synphot``)
interpolates the response linearly between the tabulated points and takes it as zero outside.

Where a curve comes from is written as a *spec* string, as a configuration names it:

- a speclite name ``"<group>-<band>"`` (``"sdss2010-r"``, ``"wise2010-W1"``, ``"lsst2023-i"``,
  ``"hsc2017-g"``, ``"decam2014-z"``, ...; :func:`speclite_filter`);
- the path of a two-column text file (:func:`read_filter_file`);
- ``"rail:<path inside RAIL's package data>"``, e.g.
  ``"rail:examples_data/estimation_data/data/FILTER/DC2LSST_u.res"``.  The core package does not
  import RAIL: such a spec is turned into a path by a *resolver* function that the caller may
  pass (``resolve=``; ``rail.photovaez.data.rail_resolver`` is RAIL's ``find_rail_file``), and
  without one by :func:`rail_package_file`, which searches the folders of the ``rail``
  namespace package without importing it.

:data:`FILTER_PRESETS` names the curves of the bands of each feature preset of
``photovaez.features`` (``lsst``, ``sdss_mgs``, ``sdss_wise``), in the order of the preset's
``bands``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["FilterCurve", "FILTER_PRESETS", "RAIL_PREFIX", "read_two_columns", "check_tabulated", "resolve_path",
           "rail_package_file",
           "read_filter_file", "speclite_filter", "load_filter", "load_filters", "filter_support"]

RAIL_PREFIX = "rail:"
"""Prefix of a spec that names a file by its path inside RAIL's package data."""

_RAIL_FILTERS = "rail:examples_data/estimation_data/data/FILTER/"
_SDSS = [f"sdss2010-{b}" for b in "ugriz"]

FILTER_PRESETS: dict[str, list[str]] = {
    # DC2's LSST ugrizy curves, as RAIL ships them (the bands of photovaez.features.preset("lsst"))
    "lsst": [f"{_RAIL_FILTERS}DC2LSST_{b}.res" for b in "ugrizy"],
    # the SDSS MGS model magnitudes u g r i z
    "sdss_mgs": list(_SDSS),
    # photovaez.features.preset("sdss_wise").bands: model ugriz, WISE W1 W2, psf ugriz
    "sdss_wise": _SDSS + ["wise2010-W1", "wise2010-W2"] + _SDSS,
}
"""The filter spec of each band of the feature presets of the same name, in the presets' band order."""


class FilterCurve(NamedTuple):
    """A band's filter curve.

    Attributes
    ----------
    name : str
        The band's name (a file's stem, e.g. ``"DC2LSST_u"``, or a speclite name ``"sdss2010-r"``).
    wavelength : numpy.ndarray
        (n,) wavelengths in Angstrom, strictly increasing.
    response : numpy.ndarray
        (n,) photon-counting transmission at ``wavelength``, >= 0 and not all zero.
    """

    name: str
    wavelength: np.ndarray
    response: np.ndarray


Resolver = Callable[[str], "str | os.PathLike[str]"]


def resolve_path(spec: str | os.PathLike[str], resolve: Resolver | None = None) -> str:
    """The file path that ``spec`` names.

    Parameters
    ----------
    spec : str or path-like
        A path, or ``"rail:<path inside RAIL's package data>"``.
    resolve : callable, optional
        Turns the part after ``"rail:"`` into a path (``rail.photovaez.data.rail_resolver``).

    Returns
    -------
    str
        The path (for a plain path, ``spec`` itself).

    Raises
    ------
    ValueError
        A ``"rail:"`` spec that no resolver finds.
    """
    spec = os.fspath(spec)
    if not spec.startswith(RAIL_PREFIX):
        return spec
    rel = spec[len(RAIL_PREFIX):]
    if resolve is None:
        return rail_package_file(rel)
    return os.fspath(resolve(rel))


def rail_package_file(rel: str) -> str:
    """The path of ``rel`` inside the ``rail`` namespace package's folders, found without importing
    RAIL (``importlib.util.find_spec`` lists the folders; the same search as RAIL's
    ``find_rail_file``): the default resolver of ``"rail:"`` specs.

    Raises
    ------
    ValueError
        RAIL is not installed, or no folder of it holds ``rel``.
    """
    import importlib.util

    found = importlib.util.find_spec("rail")
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        path = os.path.abspath(os.path.join(folder, rel))
        if os.path.exists(path):
            return path
    raise ValueError(f"'rail:{rel}' names a file of RAIL's package data, which is not in {folders or 'any folder'} "
                     "(install pz-rail-base, or give the file's path)")


def read_two_columns(path: str | os.PathLike[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """The two numeric columns of a text file (``#`` starts a comment; blank lines are skipped).

    Parameters
    ----------
    path : str or path-like
        The file.
    what : str
        What the file holds, for the error messages (``"filter file"``, ``"SED file"``).

    Returns
    -------
    x, y : numpy.ndarray
        The first and second column, float64, at least two rows, all finite.

    Raises
    ------
    ValueError
        Unreadable numbers, a row that does not have exactly two columns, fewer than two rows or
        non-finite values; the message names the file.
    """
    path = os.fspath(path)
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{what} {path}: line {lineno} has {len(fields)} columns, expected 2 "
                                 "(wavelength in Angstrom, value)")
            try:
                rows.append((float(fields[0]), float(fields[1])))
            except ValueError:
                raise ValueError(f"{what} {path}: line {lineno} is not two numbers: {line.strip()!r}") from None
    if len(rows) < 2:
        raise ValueError(f"{what} {path}: needs at least two rows of (wavelength, value), found {len(rows)}")
    data = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{what} {path}: holds non-finite values")
    return data[:, 0], data[:, 1]


def check_tabulated(wavelength, values, source: str, quantity: str,
                    zero_wavelength: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check a tabulated curve: finite, strictly increasing wavelengths, values >= 0, not all zero.

    Parameters
    ----------
    wavelength, values : array_like
        (n,) wavelengths in Angstrom and the curve's values there.
    source : str
        Where the curve comes from (a file, a name), for the error messages.
    quantity : str
        What the values are (``"response"``, ``"f_lambda"``), for the error messages.
    zero_wavelength : bool
        Whether the first wavelength may be 0 (a template's may; a filter's must be > 0).

    Returns
    -------
    wavelength, values : numpy.ndarray
        float64 copies.

    Raises
    ------
    ValueError
        Naming ``source`` and the first offending point.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.shape != values.shape or len(wavelength) < 2:
        raise ValueError(f"{source}: wavelength and {quantity} must be 1-d arrays of the same length >= 2")
    if not np.all(np.isfinite(wavelength)) or not np.all(np.isfinite(values)):
        raise ValueError(f"{source}: holds non-finite values")
    if not np.all(np.diff(wavelength) > 0):
        i = int(np.argmin(np.diff(wavelength) > 0))
        raise ValueError(f"{source}: wavelengths must be strictly increasing "
                         f"({wavelength[i]} is followed by {wavelength[i + 1]})")
    if wavelength[0] < 0 or (wavelength[0] == 0 and not zero_wavelength):
        raise ValueError(f"{source}: wavelengths must be positive (Angstrom), the first is {wavelength[0]}")
    if np.any(values < 0):
        i = int(np.argmax(values < 0))
        raise ValueError(f"{source}: negative {quantity} {values[i]} at {wavelength[i]} Angstrom")
    if not np.any(values > 0):
        raise ValueError(f"{source}: the {quantity} is zero everywhere")
    return wavelength, values


def _checked_curve(name: str, wavelength, response, source: str) -> FilterCurve:
    return FilterCurve(name, *check_tabulated(wavelength, response, source, "response"))


def read_filter_file(path: str | os.PathLike[str], name: str | None = None) -> FilterCurve:
    """A filter curve from a two-column text file: wavelength in Angstrom, photon-counting response.

    RAIL's ``FILTER/*.res`` files have this form (their wavelengths are in Angstrom even where a
    header says nm: ``DC2LSST_u.res`` runs from 3000 to 11500).

    Parameters
    ----------
    path : str or path-like
        The file; ``#`` starts a comment.
    name : str, optional
        The band's name; default the file's name without its extension (``"DC2LSST_u"``).

    Returns
    -------
    FilterCurve

    Raises
    ------
    ValueError
        Naming the file: rows that are not two numbers, wavelengths that do not increase strictly
        or are not positive, a negative response, a response that is zero everywhere.
    """
    path = os.fspath(path)
    wavelength, response = read_two_columns(path, "filter file")
    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
    return _checked_curve(name, wavelength, response, f"filter file {path}")


def speclite_filter(name: str) -> FilterCurve:
    """A filter curve from speclite, ``"<group>-<band>"`` (``"sdss2010-r"``, ``"wise2010-W1"``, ...).

    Parameters
    ----------
    name : str
        A speclite filter name.

    Returns
    -------
    FilterCurve
        speclite's tabulated wavelengths (Angstrom) and photon-counting response.

    Raises
    ------
    ValueError
        An unknown name; the message lists speclite's filter groups.
    """
    import speclite.filters

    try:
        response = speclite.filters.load_filter(name)
    except ValueError as err:
        groups = ", ".join(speclite.filters.filter_group_names)
        raise ValueError(f"unknown speclite filter {name!r} ({err}); speclite's groups are: {groups} "
                         "(a name is '<group>-<band>', e.g. 'sdss2010-r')") from None
    return _checked_curve(name, np.asarray(response.wavelength), np.asarray(response.response), f"speclite {name}")


def load_filter(spec: str | os.PathLike[str] | FilterCurve, resolve: Resolver | None = None) -> FilterCurve:
    """One band's filter curve from a spec: a :class:`FilterCurve`, a file or a speclite name.

    Parameters
    ----------
    spec : FilterCurve, str or path-like
        A :class:`FilterCurve` (returned, checked); ``"rail:<path>"`` (a file of RAIL's package
        data, found by ``resolve``); the path of an existing file; otherwise a speclite name (it
        contains ``-`` and no path separator).
    resolve : callable, optional
        Resolver of ``"rail:"`` specs (``rail.photovaez.data.rail_resolver``).

    Returns
    -------
    FilterCurve
        Checked as :func:`read_filter_file` checks a file's curve; a bad file, an unknown speclite
        name or a spec that is none of these raises a ``ValueError``.
    """
    if isinstance(spec, FilterCurve):
        return _checked_curve(spec.name, spec.wavelength, spec.response, f"filter curve {spec.name!r}")
    if not isinstance(spec, str) or spec.startswith(RAIL_PREFIX) or os.path.isfile(spec):
        return read_filter_file(resolve_path(spec, resolve))
    if "-" in spec and "/" not in spec and os.sep not in spec:
        try:
            return speclite_filter(spec)
        except ValueError as err:
            raise ValueError(f"filter {spec!r} is not an existing file, and as a speclite name: {err}") from None
    raise ValueError(f"filter {spec!r}: not an existing file, a 'rail:' path or a speclite name "
                     "('<group>-<band>', e.g. 'sdss2010-r')")


def load_filters(specs: str | Sequence[str | os.PathLike[str] | FilterCurve],
                 resolve: Resolver | None = None) -> list[FilterCurve]:
    """The filter curves of several bands: a preset name of :data:`FILTER_PRESETS` or a list of specs.

    Parameters
    ----------
    specs : str or sequence
        ``"lsst"``, ``"sdss_mgs"``, ``"sdss_wise"``, or one :func:`load_filter` spec per band.
    resolve : callable, optional
        Resolver of ``"rail:"`` specs (the ``lsst`` preset needs one).

    Returns
    -------
    list of FilterCurve
    """
    if isinstance(specs, str):
        if specs not in FILTER_PRESETS:
            raise ValueError(f"unknown filter preset {specs!r}; choose one of {sorted(FILTER_PRESETS)} "
                             "or give one filter spec per band")
        specs = FILTER_PRESETS[specs]
    return [load_filter(s, resolve) for s in specs]


def filter_support(curve: FilterCurve) -> tuple[float, float]:
    """The wavelength range (Angstrom) outside which the linearly interpolated response is zero.

    Parameters
    ----------
    curve : FilterCurve

    Returns
    -------
    lo, hi : float
        The tabulated wavelengths just outside the first and last non-zero response (the curve's
        ends where it is non-zero there).
    """
    nonzero = np.flatnonzero(curve.response > 0)
    lo = max(int(nonzero[0]) - 1, 0)
    hi = min(int(nonzero[-1]) + 1, len(curve.wavelength) - 1)
    return float(curve.wavelength[lo]), float(curve.wavelength[hi])
