"""Export of a trained SDGM from the plain model dict to JAX: a parameter pytree and pure functions.

Nothing here imports torch: the model dict (:mod:`photovaez.io`) holds the PyTorch ``state_dict``
as numpy arrays, and :func:`export_params` turns it into a pytree::

    params = {
        "q_b_given_x":   {"layers": [(W, c), ...], "head": (W, c)},   # W in (in, out) layout
        "q_z_given_bx":  ...,  "q_a_given_xbz": ...,  "p_b_given_az": ...,  "p_x_given_abz": ...,
        "prior_mu_z", "prior_log_sigma2_z", "logz_mean", "logz_std": scalars,
        "proposal": Proposal(log_tau_b, log_tau_z, log_tau_a)  # the importance proposal's temperatures
        "static": StaticConfig(...)   # sizes, activation, log-variance bounds (no leaves)
    }

With ``decoder = "sed"`` there is no ``p_x_given_abz`` network; ``params["sed"]`` is the SED
decoder's pytree (:func:`photovaez.export_sed.sed_params`).  With the ``bpz`` prior there is no
``prior_mu_z`` / ``prior_log_sigma2_z``; ``params["p_z_given_m"]`` holds the constrained
:class:`~photovaez.redshift_prior.BPZPriorParams`.  The functions that read a galaxy take its
observation row (:mod:`photovaez.observations`): the encoder networks use its first D_x columns
(so plain features work for them too), :func:`log_p_x_given_abz` and :func:`log_p_z` the rest.

``torch.nn.Linear`` stores ``W`` as (out, in) and computes ``x @ W.T + c``; the export transposes
once so that every layer here is ``h @ W + c``.  The static settings are a pytree node without
leaves (:func:`jax.tree_util.register_static`), so ``params`` passes through ``jit``/``vmap``
unchanged and every function below is a pure function of ``(params, inputs)``.

Each network function returns ``(mean, logvar)`` exactly as :class:`photovaez.model.GaussianMLP`:
the inputs are concatenated in the same order, the hidden activation is the same (SiLU, tanh,
ReLU, exact-erf GELU), the log-variance is ``soft_clamp``-ed to (lo, hi) and broadcast to the
mean's shape when it is shared (``per_dim_variance=False``).  Networks that take z see
``(log z - logz_mean) / logz_std`` (:func:`z_input`).  Log-normal log-densities include the
``1/z`` Jacobian.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .observations import split_observation

__all__ = [
    "StaticConfig",
    "NETWORKS",
    "export_params",
    "soft_clamp",
    "activation_function",
    "mlp_hidden",
    "gaussian_mlp",
    "gaussian_head",
    "z_input",
    "q_b_given_x",
    "q_z_given_bx",
    "q_a_given_xbz",
    "p_b_given_az",
    "p_x_given_abz",
    "log_normal_diag",
    "log_p_x_given_abz",
    "log_p_a",
    "log_p_z",
    "log_p_xzab",
    "log_q_z_given_bx",
]

NETWORKS = ("q_b_given_x", "q_z_given_bx", "q_a_given_xbz", "p_b_given_az", "p_x_given_abz")
_LOG_2PI = math.log(2.0 * math.pi)


@jax.tree_util.register_static
@dataclass(frozen=True)
class StaticConfig:
    """Hashable, leaf-less settings of the exported model (from ``ModelConfig``)."""

    dim_x: int
    dim_a: int
    dim_b: int
    activation: str
    per_dim_variance: bool
    logvar_min: float
    logvar_max: float
    x_logvar_min: float
    decoder: str = "mlp"
    prior: str = "lognormal"
    n_bands: int = 0
    sed_uses_b: bool = False
    dim_obs: int = 0  # width of an observation row, ModelConfig.dim_obs

    @property
    def networks(self) -> tuple[str, ...]:
        """The Gaussian MLPs of the model (no ``p_x_given_abz`` with the sed decoder)."""
        return NETWORKS if self.decoder == "mlp" else NETWORKS[:-1]

    def bounds(self, net: str) -> tuple[float, float]:
        """(lo, hi) log-variance bounds of network ``net``."""
        lo = self.x_logvar_min if net == "p_x_given_abz" else self.logvar_min
        return lo, self.logvar_max

    def out_dim(self, net: str) -> int:
        return {"q_b_given_x": self.dim_b, "q_z_given_bx": 1, "q_a_given_xbz": self.dim_a,
                "p_b_given_az": self.dim_b, "p_x_given_abz": self.dim_x}[net]


def activation_function(name: str):
    """The hidden-layer nonlinearity called ``name`` (:data:`photovaez.config.ACTIVATIONS`) as a JAX function."""
    if name == "silu":
        return jax.nn.silu
    if name == "tanh":
        return jnp.tanh
    if name == "relu":
        return jax.nn.relu
    if name == "gelu":  # torch.nn.GELU default is the exact erf form
        return lambda v: jax.nn.gelu(v, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


def _net_params(state: Mapping[str, Any], prefix: str, dtype) -> dict[str, Any]:
    """Layers of one ``GaussianMLP`` (``{prefix}.body.{2k}`` linear layers, ``{prefix}.head``)."""
    idx = sorted(
        {int(k[len(prefix) + 6 :].split(".")[0]) for k in state if k.startswith(prefix + ".body.")}
    )
    def lin(name: str) -> tuple[jnp.ndarray, jnp.ndarray]:
        w = np.asarray(state[f"{name}.weight"], dtype=np.float64).T  # (out, in) -> (in, out)
        c = np.asarray(state[f"{name}.bias"], dtype=np.float64)
        return jnp.asarray(w, dtype=dtype), jnp.asarray(c, dtype=dtype)

    layers = [lin(f"{prefix}.body.{i}") for i in idx]  # Linear at even indices, activation between
    return {"layers": layers, "head": lin(f"{prefix}.head")}


def export_params(model_dict: Mapping[str, Any], dtype: Any = jnp.float32) -> dict[str, Any]:
    """Build the JAX parameter pytree from a PhotoVAEz model dict.

    Parameters
    ----------
    model_dict
        The plain model dict (``state`` and ``model_config`` are used); a dict with only those two
        keys is enough.
    dtype
        Floating type of the exported arrays (``jnp.float64`` needs ``jax_enable_x64``).

    Returns
    -------
    dict
        The parameter pytree described in the module docstring.
    """
    state = model_dict["state"]
    mc = ModelConfig.from_stored(model_dict["model_config"])
    decoder, prior = mc.decoder, mc.prior
    static = StaticConfig(
        dim_x=int(mc.dim_x), dim_a=int(mc.dim_a), dim_b=int(mc.dim_b), activation=mc.activation,
        per_dim_variance=bool(mc.per_dim_variance), logvar_min=float(mc.logvar_min),
        logvar_max=float(mc.logvar_max), x_logvar_min=float(mc.x_logvar_min), decoder=decoder, prior=prior,
        n_bands=int(mc.n_bands), sed_uses_b=bool(mc.sed_uses_b), dim_obs=int(mc.dim_obs),
    )
    activation_function(static.activation)
    params: dict[str, Any] = {net: _net_params(state, f"{net}_net", dtype) for net in static.networks}
    scalars = ("logz_mean", "logz_std") + (("prior_mu_z", "prior_log_sigma2_z") if prior == "lognormal" else ())
    for name in scalars:
        params[name] = jnp.asarray(np.asarray(state[name], dtype=np.float64), dtype=dtype)
    for net in static.networks:
        w, _ = params[net]["head"]
        d = static.out_dim(net)
        want = 2 * d if static.per_dim_variance else d + 1
        if w.shape[1] != want:
            raise ValueError(f"{net}: head has {w.shape[1]} outputs, model_config implies {want}")
    if decoder == "sed":
        from .export_sed import sed_decoder_from_state, sed_params

        exported = sed_decoder_from_state(state, "sed_decoder", {
            "a_dim": static.dim_a, "b_dim": static.dim_b if static.sed_uses_b else 0, "activation": static.activation,
            "correction_max": float(mc.correction_max), "reference_band": int(mc.reference_band_index)})
        params["sed"] = sed_params(exported, dtype)
    if prior == "bpz":
        from .redshift_prior import BPZPriorRaw, constrain

        raw = BPZPriorRaw(*(np.asarray(state[f"p_z_given_m.{k}"], dtype=np.float64)
                            for k in ("alpha_raw", "z0_raw", "km", "alpha_slope")))
        bpz = constrain(raw, np.asarray(state["p_z_given_m.m0"], dtype=np.float64), np)
        params["p_z_given_m"] = type(bpz)(*(jnp.asarray(v, dtype=dtype) for v in bpz))
    from .proposal import proposal_from_dict

    params["proposal"] = proposal_from_dict(model_dict.get("proposal"), static.dim_a, static.dim_b, dtype)
    params["static"] = static
    return params


def soft_clamp(v: jnp.ndarray, lo: float, hi: float) -> jnp.ndarray:
    """Smoothly keep ``v`` within (lo, hi), as :func:`photovaez.model.soft_clamp`."""
    v = lo + jax.nn.softplus(v - lo)
    return hi - jax.nn.softplus(hi - v)


def mlp_hidden(layers: Any, activation: str, h: jnp.ndarray) -> jnp.ndarray:
    """The hidden layers of an exported MLP: ``h = act(h @ W + c)`` for each ``(W, c)`` in ``layers``.

    ``W`` is in (in, out) layout; ``activation`` is a name of :data:`photovaez.model.ACTIVATIONS`.
    The output layer (no activation) is the caller's.
    """
    act = activation_function(activation)
    for w, c in layers:
        h = act(h @ w + c)
    return h


def gaussian_mlp(net: Mapping[str, Any], static: StaticConfig, name: str, *inputs: jnp.ndarray
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and log-variance of one exported ``GaussianMLP`` (inputs concatenated on the last axis).

    Parameters
    ----------
    net
        ``params[name]``: ``{"layers": [(W, c), ...], "head": (W, c)}``.
    static
        ``params["static"]``.
    name
        Network name (selects the log-variance bounds and the output size).
    *inputs
        Arrays with a common batch shape; concatenated along the last axis.
    """
    return gaussian_head(net, static, name, mlp_hidden(net["layers"], static.activation,
                                                       jnp.concatenate(inputs, axis=-1)))


def gaussian_head(net: Mapping[str, Any], static: StaticConfig, name: str, h: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The output layer of :func:`gaussian_mlp` on the last hidden layer ``h``: mean and the
    ``soft_clamp``-ed log-variance (broadcast to the mean's shape when shared)."""
    w, c = net["head"]
    h = h @ w + c
    d = static.out_dim(name)
    mu, raw = h[..., :d], h[..., d:]
    lo, hi = static.bounds(name)
    logvar = jnp.broadcast_to(soft_clamp(raw, lo, hi), mu.shape)
    return mu, logvar


def z_input(params: Mapping[str, Any], z: jnp.ndarray) -> jnp.ndarray:
    """Standardised ``log z`` as a trailing axis of length 1 (the z input of the networks)."""
    return ((jnp.log(z) - params["logz_mean"]) / params["logz_std"])[..., None]


def q_b_given_x(params: Mapping[str, Any], x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """q(b | x): mean and log-variance, shape (..., B); ``x`` may be observation rows."""
    return gaussian_mlp(params["q_b_given_x"], params["static"], "q_b_given_x", x[..., :params["static"].dim_x])


def q_z_given_bx(params: Mapping[str, Any], b: jnp.ndarray, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """q(z | b, x) = LogNormal: mean and log-variance of log z, shape (..., 1); ``x`` may be observation rows."""
    return gaussian_mlp(params["q_z_given_bx"], params["static"], "q_z_given_bx", x[..., :params["static"].dim_x], b)


def q_a_given_xbz(params: Mapping[str, Any], x: jnp.ndarray, b: jnp.ndarray, z: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """q(a | x, b, z): mean and log-variance, shape (..., A); ``z`` has the batch shape."""
    return gaussian_mlp(params["q_a_given_xbz"], params["static"], "q_a_given_xbz", x[..., :params["static"].dim_x], b,
                        z_input(params, z))


def p_b_given_az(params: Mapping[str, Any], a: jnp.ndarray, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """p(b | a, z): mean and log-variance, shape (..., B)."""
    return gaussian_mlp(params["p_b_given_az"], params["static"], "p_b_given_az", a, z_input(params, z))


def p_x_given_abz(params: Mapping[str, Any], a: jnp.ndarray, b: jnp.ndarray, z: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """p(x | a, b, z): mean and log-variance, shape (..., D_x)."""
    return gaussian_mlp(params["p_x_given_abz"], params["static"], "p_x_given_abz", a, b, z_input(params, z))


def log_normal_diag(v: jnp.ndarray, mu: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
    """log N(v; mu, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + (v - mu) ** 2 * jnp.exp(-logvar), axis=-1)


def log_p_a(a: jnp.ndarray) -> jnp.ndarray:
    """log p(a) = log N(a; 0, I), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + a**2, axis=-1)


def log_p_x_given_abz(params: Mapping[str, Any], obs: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray, z: jnp.ndarray
                      ) -> jnp.ndarray:
    """log p(x | a, b, z) of observation rows ``obs`` (..., dim_obs): the mlp decoder's Gaussian of
    the features, or the sed decoder's flux likelihood of the rows' fluxes (amplitude marginalised,
    :func:`photovaez.export_sed.sed_log_p_x_given_abz`).  ``z`` may have fewer batch axes than ``a``
    (e.g. one redshift for all the importance samples of a galaxy): it broadcasts, and the sed
    decoder then interpolates its tables once for all of them."""
    st = params["static"]
    x, cols = split_observation(obs, st)
    if st.decoder == "sed":
        from .export_sed import sed_log_p_x_given_abz

        return sed_log_p_x_given_abz(params["sed"], cols.flux, cols.flux_err, a, z, b if st.sed_uses_b else None)
    return log_normal_diag(x, *p_x_given_abz(params, a, b, jnp.broadcast_to(z, a.shape[:-1])))


def log_p_z(params: Mapping[str, Any], z: jnp.ndarray, obs: jnp.ndarray | None = None) -> jnp.ndarray:
    """log p(z) of the trained prior, with the ``1/z`` Jacobian: the log-normal, or BPZ's p(z | m_ref)
    at the m_ref of the observation rows ``obs`` (which the bpz prior needs; ``z`` and ``obs[..., -1]``
    broadcast)."""
    if params["static"].prior == "bpz":
        from .redshift_prior import log_p_z_given_m

        if obs is None:
            raise ValueError("log_p_z: the bpz prior needs the observation rows (their m_ref)")
        return log_p_z_given_m(z, obs[..., -1], params["p_z_given_m"], jnp)
    logz = jnp.log(z)
    s2 = params["prior_log_sigma2_z"]
    return -0.5 * (_LOG_2PI + s2 + (logz - params["prior_mu_z"]) ** 2 * jnp.exp(-s2)) - logz


def log_p_xzab(params: Mapping[str, Any], obs: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray, z: jnp.ndarray
               ) -> jnp.ndarray:
    """The model's joint density ``log p(x | a, b, z) + log p(b | a, z) + log p(a) + log p(z)`` (density
    in z) of one galaxy's observation row ``obs`` (dim_obs,) at latents ``a`` (..., A), ``b`` (..., B),
    ``z`` (...)."""
    obs_n = jnp.broadcast_to(obs, a.shape[:-1] + obs.shape[-1:])
    return (log_p_x_given_abz(params, obs_n, a, b, z) + log_normal_diag(b, *p_b_given_az(params, a, z)) + log_p_a(a)
            + log_p_z(params, z, obs_n))


def log_q_z_given_bx(params: Mapping[str, Any], z: jnp.ndarray, b: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """log q(z | b, x) (log-normal, with the ``1/z`` Jacobian); ``z`` has the batch shape."""
    mu, logvar = q_z_given_bx(params, b, x)
    logz = jnp.log(z)
    return -0.5 * (_LOG_2PI + logvar[..., 0] + (logz - mu[..., 0]) ** 2 * jnp.exp(-logvar[..., 0])) - logz
