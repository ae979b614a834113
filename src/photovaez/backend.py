"""The array library behind functions written once for numpy, torch and jax.numpy.

Maths such as :func:`photovaez.flux_likelihood.log_p_flux` and
:func:`photovaez.redshift_prior.log_p_z_given_m` take the array module ``xp`` and use its
functions and methods, which share their names across the three libraries.  Special functions
are the exception: they live in ``scipy.special``, ``torch.special`` and ``jax.scipy.special``;
:func:`special_function` finds them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

__all__ = ["special_function"]


def special_function(name: str, xp: ModuleType) -> Callable:
    """The special function ``name`` (e.g. ``"log_ndtr"``, ``"gammaln"``) of ``xp``'s library:
    ``scipy.special`` for numpy, ``torch.special`` for torch, ``jax.scipy.special`` for jax.numpy."""
    lib = xp.__name__
    if lib == "numpy":
        import scipy.special as special
    elif lib == "torch":
        special = xp.special
    elif lib.startswith("jax"):
        import jax.scipy.special as special
    else:
        raise ValueError(f"{name}: xp must be numpy, torch or jax.numpy, got {lib!r}")
    return getattr(special, name)
