"""Export of the physics decoder (:class:`photovaez.sed_decoder.RestFrameSEDDecoder`) to JAX.

Two steps, as for the SDGM's networks (:mod:`photovaez.export`):

* :func:`export_sed_decoder` turns a torch decoder into *plain data* (numpy arrays, lists, Python
  numbers and strings; it survives a model file's safe unpickler)::

      {"net": [[W, c], ...],            # the MLP's Linear layers, W in (in, out) layout
       "z_grid": (nz,), "flux_table": (nz, T, B), "correction_table": (nz, T, K, B),
       "intrinsic_raw": (), "zero_point_delta": (B,) or None,
       "static": {"a_dim", "b_dim", "n_templates", "n_correction", "n_bands",
                  "activation", "correction_max", "reference_band" (-1: none)}}

* :func:`sed_params` turns that dict into a JAX pytree (arrays of one dtype, the settings a
  leaf-less :class:`SEDStaticConfig`), which passes through ``jit``/``vmap``.

:func:`sed_band_fluxes` and :func:`sed_log_p_x_given_abz` are pure functions of ``(params, inputs)``
and compute exactly what the torch decoder's ``band_fluxes`` and ``log_p_x_given_abz`` do: the same
MLP (:func:`photovaez.export.mlp_hidden`), w = softmax, c = c_max tanh, the tables interpolated
linearly in z with the same interval index and fraction (z clamped to the grid's ends), the
zero-point offsets, and :func:`photovaez.flux_likelihood.log_p_flux` with ``xp=jax.numpy``.
They also accept the plain dict (converted on the fly), but a plain dict cannot be a ``jit``
argument (its settings are strings): pass :func:`sed_params`' pytree, or close over the dict.
Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .export import mlp_hidden
from .flux_likelihood import log_p_flux

__all__ = ["SEDStaticConfig", "export_sed_decoder", "sed_decoder_from_state", "sed_params",
           "sed_weights_and_correction", "interpolate_table", "sed_band_fluxes", "sed_log_p_x_given_abz"]

_ACTIVATION_NAMES = {"SiLU": "silu", "Tanh": "tanh", "ReLU": "relu", "GELU": "gelu"}
_ARRAYS = ("z_grid", "flux_table", "correction_table", "intrinsic_raw")


@jax.tree_util.register_static
@dataclass(frozen=True)
class SEDStaticConfig:
    """Hashable, leaf-less settings of an exported SED decoder."""

    a_dim: int
    b_dim: int
    n_templates: int
    n_correction: int
    n_bands: int
    activation: str
    correction_max: float
    reference_band: int = -1


def _numpy(t: Any) -> np.ndarray:
    return np.array(t.detach().cpu().numpy() if hasattr(t, "detach") else t)


def _activation_name(decoder: Any) -> str:
    names = {_ACTIVATION_NAMES.get(type(m).__name__) for m in decoder.net if not hasattr(m, "weight")}
    if len(names) > 1 or None in names:
        raise ValueError(f"export_sed_decoder: unsupported activations {names}")
    gelus = [m for m in decoder.net if type(m).__name__ == "GELU"]
    if any(getattr(m, "approximate", "none") != "none" for m in gelus):
        raise ValueError("export_sed_decoder: only the exact (erf) GELU is supported")
    return names.pop() if names else "silu"  # no hidden layer: the activation is never used


def export_sed_decoder(decoder: Any) -> dict[str, Any]:
    """The plain-data export of a :class:`~photovaez.sed_decoder.RestFrameSEDDecoder` (module docstring).

    The arrays keep the decoder's dtype (its tables' rounding included); :func:`sed_params` casts.
    """
    linears = [m for m in decoder.net if hasattr(m, "weight")]
    basis = decoder.basis
    zp = decoder.zero_point_delta
    return {
        "net": [[_numpy(m.weight).T.copy(), _numpy(m.bias)] for m in linears],  # (out, in) -> (in, out)
        "z_grid": _numpy(decoder.z_grid),
        "flux_table": _numpy(decoder.flux_table),
        "correction_table": _numpy(decoder.correction_table),
        "intrinsic_raw": _numpy(decoder.intrinsic_raw),
        "zero_point_delta": None if zp is None else _numpy(zp),
        "static": {"a_dim": int(decoder.a_dim), "b_dim": int(decoder.b_dim),
                   "n_templates": int(basis.n_templates), "n_correction": int(basis.n_correction),
                   "n_bands": int(basis.n_bands), "activation": _activation_name(decoder),
                   "correction_max": float(decoder.correction_max),
                   "reference_band": -1 if decoder.reference_band is None else int(decoder.reference_band)},
    }


def sed_decoder_from_state(state: Mapping[str, Any], prefix: str, static: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`export_sed_decoder`'s dict from a model file's ``state`` (numpy arrays), without torch.

    Parameters
    ----------
    state
        The SDGM's ``state_dict`` as arrays (:mod:`photovaez.io`).
    prefix
        The decoder's attribute in the SDGM (``"sed_decoder"``).
    static
        ``a_dim``, ``b_dim``, ``activation``, ``correction_max`` and ``reference_band`` (the sizes of
        the tables are read from the tables).
    """
    layers = sorted({int(k[len(prefix) + 5:].split(".")[0]) for k in state
                     if k.startswith(prefix + ".net.") and k.endswith(".weight")})
    net = [[np.asarray(state[f"{prefix}.net.{i}.weight"]).T.copy(), np.asarray(state[f"{prefix}.net.{i}.bias"])]
           for i in layers]
    flux_table = np.asarray(state[f"{prefix}.flux_table"])
    correction_table = np.asarray(state[f"{prefix}.correction_table"])
    zp = state.get(f"{prefix}.zero_point_delta")
    return {
        "net": net, "z_grid": np.asarray(state[f"{prefix}.z_grid"]), "flux_table": flux_table,
        "correction_table": correction_table, "intrinsic_raw": np.asarray(state[f"{prefix}.intrinsic_raw"]),
        "zero_point_delta": None if zp is None else np.asarray(zp),
        "static": {"a_dim": int(static["a_dim"]), "b_dim": int(static["b_dim"]),
                   "n_templates": int(flux_table.shape[1]), "n_correction": int(correction_table.shape[2]),
                   "n_bands": int(flux_table.shape[2]), "activation": str(static["activation"]),
                   "correction_max": float(static["correction_max"]),
                   "reference_band": int(static.get("reference_band", -1))},
    }


def sed_params(exported: Mapping[str, Any], dtype: Any = None) -> dict[str, Any]:
    """The JAX pytree of :func:`export_sed_decoder`'s dict, its arrays of ``dtype``.

    ``dtype`` defaults to the export's own (the decoder's); float64 needs ``jax.enable_x64``.
    Already-converted pytrees are returned unchanged.
    """
    if isinstance(exported["static"], SEDStaticConfig):
        return dict(exported)
    static = SEDStaticConfig(**exported["static"])
    params: dict[str, Any] = {k: jnp.asarray(np.asarray(exported[k]), dtype=dtype) for k in _ARRAYS}
    params["net"] = [(jnp.asarray(np.asarray(w), dtype=dtype), jnp.asarray(np.asarray(c), dtype=dtype))
                     for w, c in exported["net"]]
    zp = exported.get("zero_point_delta")
    params["zero_point_delta"] = None if zp is None else jnp.asarray(np.asarray(zp), dtype=dtype)
    w_out = params["net"][-1][0]
    if w_out.shape[1] != static.n_templates + static.n_correction:
        raise ValueError(f"sed_params: the output layer has {w_out.shape[1]} outputs, expected "
                         f"{static.n_templates + static.n_correction}")
    params["static"] = static
    return params


def sed_weights_and_correction(params: Mapping[str, Any], a: jnp.ndarray, b: jnp.ndarray | None = None
                               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """w = softmax(logits) (..., T) and c = c_max tanh(raw) (..., K), as the torch decoder's."""
    p = sed_params(params)
    st = p["static"]
    h = a if st.b_dim == 0 else jnp.concatenate([a, b], axis=-1)
    h = mlp_hidden(p["net"][:-1], st.activation, h)
    w, c = p["net"][-1]
    h = h @ w + c
    return jax.nn.softmax(h[..., :st.n_templates], axis=-1), st.correction_max * jnp.tanh(h[..., st.n_templates:])


def interpolate_table(grid: jnp.ndarray, table: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """table (nz, ...) linearly interpolated at z (...) -> (z.shape, ...), z clamped to the grid.

    The interval index ``k = clip(searchsorted(grid, z, right) - 1, 0, nz - 2)`` and the fraction
    ``u = (z - grid[k]) / (grid[k+1] - grid[k])`` are the torch decoder's.
    """
    zc = jnp.clip(z, grid[0], grid[-1])
    k = jnp.clip(jnp.searchsorted(grid, jax.lax.stop_gradient(zc), side="right") - 1, 0, grid.shape[0] - 2)
    u = (zc - grid[k]) / (grid[k + 1] - grid[k])
    u = u.reshape(u.shape + (1,) * (table.ndim - 1))
    return table[k] * (1.0 - u) + table[k + 1] * u


def sed_band_fluxes(params: Mapping[str, Any], a: jnp.ndarray, z: jnp.ndarray,
                    b: jnp.ndarray | None = None) -> jnp.ndarray:
    """Model fluxes (..., B) of type a (..., A) (and b) at redshift z (...), up to the amplitude.

    m_j = exp(delta_j) sum_t w_t [F_tj(z) + sum_k c_k G_tkj(z)], as ``RestFrameSEDDecoder.band_fluxes``.
    """
    p = sed_params(params)
    w, c = sed_weights_and_correction(p, a, b)
    f = jnp.einsum("...t,...tb->...b", w, interpolate_table(p["z_grid"], p["flux_table"], z))
    if p["static"].n_correction:
        g = interpolate_table(p["z_grid"], p["correction_table"], z)
        f = f + jnp.einsum("...t,...k,...tkb->...b", w, c, g)
    if p["zero_point_delta"] is not None:
        f = f * jnp.exp(p["zero_point_delta"])
    return f


def sed_log_p_x_given_abz(params: Mapping[str, Any], flux: jnp.ndarray, flux_err: jnp.ndarray, a: jnp.ndarray,
                          z: jnp.ndarray, b: jnp.ndarray | None = None, intrinsic_frac: Any = None) -> jnp.ndarray:
    """log p(fluxes | a, b, z) (...), the amplitude marginalised, as ``RestFrameSEDDecoder.log_p_x_given_abz``.

    ``intrinsic_frac`` defaults to the learned softplus(raw).
    """
    p = sed_params(params)
    eps = jax.nn.softplus(p["intrinsic_raw"]) if intrinsic_frac is None else intrinsic_frac
    model = sed_band_fluxes(p, a, z, b)
    rb = p["static"].reference_band
    if rb >= 0:
        model = model / model[..., rb:rb + 1]
    return log_p_flux(flux, flux_err, model, eps, xp=jnp)
