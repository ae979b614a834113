"""The labelled data's support in feature space: is a galaxy's photo-z an extrapolation?

The amortised q(z|x) is trained on labels; where no labelled galaxy looks like ``x`` it
extrapolates.  The support is measured by the distance from ``x`` (the standardised features) to
its ``k``-th nearest labelled galaxy, put on the scale of the labelled galaxies themselves: the
*support score* of ``x`` is the fraction of labelled galaxies whose own (leave-one-out) ``k``-th
neighbour distance is smaller than that of ``x``.  A galaxy like the labelled ones has a score
spread uniformly on [0, 1]; a galaxy beyond them (fainter than every label, colours no label has)
scores 1.  :func:`fit_support` stores up to ``max_rows`` labelled feature vectors and the quantiles
of their leave-one-out distances in the model file (``model_dict["labelled_support"]``); the
``auto`` estimation mode reads it.  Nearest neighbours are found with ``scipy.spatial.cKDTree``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["LabelledSupport", "fit_support", "support_distance", "support_score", "support_to_dict",
           "support_from_dict"]

_N_QUANTILES = 1001


class LabelledSupport(NamedTuple):
    """Labelled feature vectors ``x`` (n, D_x), the neighbour rank ``k`` and the quantiles
    ``loo_quantiles`` (1001,) of the labelled galaxies' leave-one-out k-th neighbour distances at
    probabilities ``linspace(0, 1, 1001)``."""

    x: np.ndarray
    k: int
    loo_quantiles: np.ndarray


def fit_support(x_labelled: np.ndarray, k: int = 8, max_rows: int = 20000, seed: int = 0) -> LabelledSupport:
    """The :class:`LabelledSupport` of labelled features ``x_labelled`` (n, D_x).

    Parameters
    ----------
    k
        Neighbour rank of the distance (larger: smoother, less sensitive to one odd label).
    max_rows
        At most this many labelled rows are kept (a random subset, ``default_rng(seed)``).
    """
    from scipy.spatial import cKDTree

    x = np.asarray(x_labelled, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"fit_support needs at least 2 labelled feature rows (n, D_x), got shape {x.shape}")
    if len(x) > max_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), int(max_rows), replace=False))]
    k = int(min(max(1, k), len(x) - 1))
    dist, _ = cKDTree(x).query(x, k=k + 1)  # the first neighbour is the point itself
    loo = dist[:, k]
    return LabelledSupport(x.astype(np.float32), k, np.quantile(loo, np.linspace(0.0, 1.0, _N_QUANTILES)))


def support_distance(support: LabelledSupport, x: np.ndarray) -> np.ndarray:
    """Distance (G,) from each row of ``x`` (G, D_x) to its ``k``-th nearest labelled galaxy."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != support.x.shape[1]:
        raise ValueError(f"support_distance: x must be (n, {support.x.shape[1]}) features, got {x.shape}")
    if len(x) == 0:
        return np.zeros(0)
    dist, _ = cKDTree(np.asarray(support.x, np.float64)).query(x, k=support.k)
    return dist if support.k == 1 else dist[:, -1]


def support_score(support: LabelledSupport, x: np.ndarray) -> np.ndarray:
    """Support score (G,) in [0, 1]: the fraction of labelled galaxies whose leave-one-out k-th
    neighbour distance is below that of ``x`` (1: farther from the labels than every label is)."""
    d = support_distance(support, x)
    q = np.asarray(support.loo_quantiles, np.float64)
    return np.interp(d, q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0)


def support_to_dict(support: LabelledSupport) -> dict[str, Any]:
    """Plain arrays for the model file."""
    return {"x": np.asarray(support.x, np.float32), "k": int(support.k),
            "loo_quantiles": np.asarray(support.loo_quantiles, np.float64)}


def support_from_dict(d: Mapping[str, Any]) -> LabelledSupport:
    """The :class:`LabelledSupport` stored by :func:`support_to_dict`."""
    return LabelledSupport(np.asarray(d["x"], np.float32), int(d["k"]), np.asarray(d["loo_quantiles"], np.float64))
