"""RAIL's bundled DC2 test sample, read one way for the tests, benchmarks and examples.

``test_dc2_training_9816.hdf5`` (10,225 galaxies) and ``test_dc2_validation_9816.hdf5`` (20,449
galaxies) ship with ``pz-rail-base``; their table is the hdf5 group ``photometry`` (LSST ugrizy
magnitudes and errors, ``redshift``, ``id``), its rows sorted by redshift.  Reading needs only
h5py (``benchmarks/gpu.py`` loads this file on machines without RAIL); finding the files needs
RAIL.

``rail_resolver`` finds the files that the core's filter and template specs name as
``"rail:<path>"`` (``photovaez.filters.FILTER_PRESETS``, ``photovaez.templates.TEMPLATE_PRESETS``).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["DC2_FILES", "GROUP", "dc2_path", "read_dc2", "rail_resolver"]

DC2_FILES = {
    "training": "examples_data/testdata/test_dc2_training_9816.hdf5",
    "validation": "examples_data/testdata/test_dc2_validation_9816.hdf5",
}
GROUP = "photometry"


def dc2_path(which: str) -> str:
    """Path of RAIL's DC2 ``"training"`` or ``"validation"`` file."""
    if which not in DC2_FILES:
        raise ValueError(f"unknown DC2 file {which!r}; choose from {list(DC2_FILES)}")
    return rail_resolver(DC2_FILES[which])


def read_dc2(which: str, n: int | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
    """The table of a DC2 file as a dict of numpy arrays.

    ``which`` is ``"training"``, ``"validation"`` or the path of an hdf5 file laid out the same
    way (its group ``photometry``, or its top level when it has no such group).  With ``n``, a
    random subset of ``n`` rows (``np.random.default_rng(seed)``, without replacement) in their
    original order; ``n`` of 0, None or at least the number of rows gives the whole table.
    """
    import h5py

    path = dc2_path(which) if which in DC2_FILES else os.fspath(which)
    with h5py.File(path, "r") as f:
        g = f[GROUP] if GROUP in f else f
        table = {k: np.asarray(g[k][()]) for k in g.keys()}
    size = len(next(iter(table.values()))) if table else 0
    if not n or n >= size:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(size, n, replace=False))
    return {k: v[idx] for k, v in table.items()}


def rail_resolver(rel: str) -> str:
    """The path of ``rel``, a path inside RAIL's package data (``find_rail_file``).

    The resolver that ``photovaez.filters.load_filter(spec, resolve=...)`` and
    ``photovaez.templates.load_templates(spec, resolve=...)`` need for their ``"rail:"`` specs,
    e.g. ``rail_resolver("examples_data/estimation_data/data/FILTER/DC2LSST_u.res")``.
    """
    from rail.utils.path_utils import find_rail_file

    return find_rail_file(rel)
