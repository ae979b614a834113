"""Joint HMC: NUTS on a galaxy's whole latent space (log z, a, b), no importance weights.

The model's posterior over one galaxy's latents is, with u = log z (so z = e^u, Jacobian e^u),

    log p(u, a, b | x) = log p(x | a, b, z) + log p(b | a, z) + log p(a) + log p(z) + u + const,

every term explicit (:func:`log_p_joint`): the decoder's likelihood of the observation row
(either decoder, :func:`photovaez.export.log_p_x_given_abz`), the networks' p(b | a, z), N(0, I)
for a and the model's p(z) (log-normal or p(z | m_ref)).  NumPyro's NUTS samples the position
``theta = [u, a (A), b (B)]`` directly, so nothing here is estimated by importance sampling, and
the z-marginal is the histogram (a KDE in log z) of the u draws.

Chains.  ``n_chains`` chains per galaxy, all vmapped together, each with its own step-size and
diagonal mass-matrix adaptation.  Chain c of galaxy i starts at an encoder draw: b ~ q(b | x),
z ~ q(z | b, x), a ~ q(a | x, b, z) (chain 0 at the encoder means), with the initial inverse mass
the encoder's variances.  Keys come from ``fold_in(PRNGKey(seed), catalogue index)``: a galaxy's
draws do not depend on the chunking.  Diagnostics per galaxy: divergent transitions, the split
R-hat of u over the chains and its effective sample size (``numpyro.diagnostics``).

It is the estimation mode ``joint`` of :mod:`photovaez.estimation` (``posterior="joint"`` in the
stage; ``n_chains`` chains of ``hmc_num_warmup`` + ``hmc_num_samples`` iterations).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .export import log_p_xzab, q_a_given_xbz, q_b_given_x, q_z_given_bx
from .grid import normalise
from .mixture import kde_on_grid

__all__ = ["log_p_joint", "encoder_start", "JointHMCPosterior", "joint_hmc_posterior"]

Params = Any


def _split(params: Params, theta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    st = params["static"]
    return theta[..., 0], theta[..., 1:1 + st.dim_a], theta[..., 1 + st.dim_a:]


def log_p_joint(params: Params, obs: jnp.ndarray, theta: jnp.ndarray) -> jnp.ndarray:
    """log p(x, z, a, b) + u of one galaxy at ``theta = [u, a, b]`` (u = log z): the unnormalised
    log-density of (u, a, b) given its observation row ``obs``."""
    u, a, b = _split(params, theta)
    return log_p_xzab(params, obs, a, b, jnp.exp(u)) + u


def encoder_start(params: Params, obs: jnp.ndarray, eps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A start ``theta`` drawn from the encoder with standard-normal noise ``eps`` (1 + A + B,) (zero
    noise: the encoder means), and the encoder's variances there as an inverse mass matrix."""
    st = params["static"]
    e_u, e_a, e_b = eps[0], eps[1:1 + st.dim_a], eps[1 + st.dim_a:]
    mu_b, lv_b = q_b_given_x(params, obs)
    b = mu_b + jnp.exp(0.5 * lv_b) * e_b
    mu_u, lv_u = q_z_given_bx(params, b, obs)
    u = mu_u[0] + jnp.exp(0.5 * lv_u[0]) * e_u
    mu_a, lv_a = q_a_given_xbz(params, obs, b, jnp.exp(u))
    a = mu_a + jnp.exp(0.5 * lv_a) * e_a
    theta = jnp.concatenate([u[None], a, b])
    inv_mass = jnp.exp(jnp.concatenate([lv_u, lv_a, lv_b]))
    return theta, inv_mass


def _potential_gen(params: Params, obs: jnp.ndarray):
    def potential(theta):
        return -log_p_joint(params, obs, theta)
    return potential


@partial(jax.jit, static_argnames=("num_warmup", "num_samples", "max_tree_depth", "target_accept"))
def _run_chains(params, keys, obs, eps, *, num_warmup: int, num_samples: int, max_tree_depth: int,
                target_accept: float):
    """(u draws, divergent flags) of chains with keys (C,), observation rows (C, D) and start noise (C, 1+A+B)."""
    from numpyro.infer.hmc import hmc
    from numpyro.util import fori_collect

    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen, algo="NUTS")

    def run_one(key, o, e):
        theta0, inv_mass = encoder_start(params, o, e)
        state = init_kernel(theta0, num_warmup, step_size=0.1, inverse_mass_matrix=inv_mass,
                            target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                            model_args=(params, o), rng_key=key)
        return fori_collect(num_warmup, num_warmup + num_samples,
                            lambda s: sample_kernel(s, model_args=(params, o)), state,
                            transform=lambda s: (s.z[0], s.diverging), progbar=False)

    return jax.vmap(run_one)(keys, obs, eps)


@dataclass
class JointHMCPosterior:
    """Result of :func:`joint_hmc_posterior` (numpy arrays).

    Attributes
    ----------
    z
        (G, n_chains * num_samples) draws of z (the z-marginal of the joint chains).
    pdf
        (G, nz) KDE of the draws in log z, cell-averaged on the grid, unit integral.
    divergences
        (G,) divergent transitions among the kept draws of all chains.
    rhat
        (G,) split R-hat of log z over the chains (NaN with one chain).
    ess
        (G,) effective sample size of log z over all chains.
    flag
        (G,) 1 where no finite PDF came out, else 0.
    """

    z: np.ndarray
    pdf: np.ndarray
    divergences: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    flag: np.ndarray


def joint_hmc_posterior(params: Params, obs: np.ndarray, zgrid: np.ndarray, n_chains: int = 2,
                        num_warmup: int = 500, num_samples: int = 500, max_tree_depth: int = 8,
                        target_accept: float = 0.9, seed: int = 0, chunk_galaxies: int = 32,
                        bandwidth: float | None = None, index_offset: int = 0) -> JointHMCPosterior:
    """Sample each galaxy's p(z, a, b | x) with NUTS and return the z-marginal.

    Parameters
    ----------
    params
        :func:`photovaez.export.export_params` of a model (either decoder).
    obs
        (G, dim_obs) observation rows (:meth:`photovaez.api.Predictor.observations`).
    zgrid
        Redshift grid of the PDFs.
    n_chains
        Chains per galaxy (>= 2 for R-hat), started at encoder draws (chain 0 at its means).
    num_warmup, num_samples
        Adaptation and kept iterations per chain.
    max_tree_depth, target_accept
        NUTS settings.
    seed, index_offset
        Chain keys and start noise come from ``fold_in(PRNGKey(seed), index_offset + row)``.
    chunk_galaxies
        Galaxies whose chains run together (a batched NUTS step costs the longest trajectory).
    bandwidth
        KDE bandwidth in log z (default Silverman's per galaxy).
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    if n_chains < 1 or num_samples < 2:
        raise ValueError("joint_hmc_posterior: n_chains must be >= 1 and num_samples >= 2")
    st = params["static"]
    obs = np.asarray(obs, np.float64)
    if obs.ndim != 2 or obs.shape[1] != st.dim_obs:
        raise ValueError(f"obs must be observation rows (n_galaxies, {st.dim_obs}), got {obs.shape}")
    G, C, D = len(obs), int(n_chains), 1 + st.dim_a + st.dim_b
    dt = params["logz_mean"].dtype
    key = jax.random.PRNGKey(seed)
    u = np.empty((G, C, num_samples))
    div = np.empty(G, np.int64)
    for s in range(0, G, max(1, int(chunk_galaxies))):
        idx = np.arange(s, min(G, s + int(chunk_galaxies)))
        gkeys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx + index_offset))
        ck = jax.vmap(lambda k: jax.random.split(k, C + 1))(gkeys)  # (g, C+1, 2): chain keys, start noise
        eps = jax.vmap(lambda k: jax.random.normal(k[C], (C, D), dt))(ck).at[:, 0].set(0.0)
        out_u, out_d = _run_chains(
            params, ck[:, :C].reshape(-1, *ck.shape[2:]), jnp.repeat(jnp.asarray(obs[idx], dt), C, axis=0),
            eps.reshape(-1, D), num_warmup=int(num_warmup), num_samples=int(num_samples),
            max_tree_depth=int(max_tree_depth), target_accept=float(target_accept))
        u[idx] = np.asarray(out_u, np.float64).reshape(len(idx), C, num_samples)
        div[idx] = np.asarray(out_d).reshape(len(idx), -1).sum(1)
    rhat = np.asarray(split_gelman_rubin(np.moveaxis(u, 0, -1)), np.float64) if C >= 2 else np.full(G, np.nan)
    ess = np.asarray(effective_sample_size(np.moveaxis(u, 0, -1)), np.float64)
    flat = u.reshape(G, -1)
    pdf, flag = normalise(np.asarray(zgrid, np.float64), kde_on_grid(flat, zgrid, bandwidth=bandwidth))
    return JointHMCPosterior(np.exp(flat), pdf, div, rhat, ess, flag)
