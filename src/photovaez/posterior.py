"""The model posterior p(z | x) of a trained SDGM (SPEC "Photo-z estimation" 2, draft Eq. 23-25).

Everything here is JAX, on the parameter pytree of :func:`photovaez.export.export_params`.
A galaxy's ``x`` is its observation row (:mod:`photovaez.observations`): the features, and for the
sed decoder and the bpz prior the fluxes, their errors and m_ref, which the decoder and p(z) read.

Importance-sampled joint
------------------------
For one galaxy with fixed standard-normal noise ``eps_b`` (N, B) and ``eps_a`` (N, A)::

    b_k = mu_b(x) + sigma_b(x) eps_b[k]                    ~ q(b | x)
    a_k = mu_a(x, b_k, z) + sigma_a(x, b_k, z) eps_a[k]    ~ q(a | x, b_k, z)
    log w_k(z) = log p(x | a_k, b_k, z) + log p(b_k | a_k, z) + log p(a_k)
                 - log q(a_k | x, b_k, z) - log q(b_k | x)
    log p(x, z) ~ log p(z) + logsumexp_k log w_k(z) - log N                  (:func:`log_joint`)

With the noise held fixed per galaxy this is a smooth, deterministic function of z (common random
numbers), so the same function can be evaluated on the redshift grid and normalised exactly
(:func:`grid_posterior`) or sampled with NUTS in ``u = log z`` (:func:`hmc_posterior`).  The noise
of galaxy ``i`` is drawn from ``fold_in(PRNGKey(seed), i)``: it does not depend on the chunking.

Other estimates
---------------
* :func:`log_px`: the IWAE estimate of log p(x), (z, a, b) all drawn from the encoder
  q(b|x) q(z|b,x) q(a|x,b,z); the outlier score of SPEC "Evaluation".
* :func:`snis_posterior`: self-normalised importance sampling of the same draws, the PDF being a
  weighted Gaussian KDE in log z.

Memory
------
Every batched call handles at most ``max_rows`` network rows (galaxies x redshifts x samples);
galaxies are processed in chunks padded to a fixed size so that each function compiles once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy.special import logsumexp as scipy_logsumexp

from .export import (
    log_normal_diag,
    log_p_a,
    log_p_x_given_abz,
    log_p_xzab,
    log_p_z,
    p_b_given_az,
    q_b_given_x,
    q_z_given_bx,
)
from .grid import cdf_on_grid, normalise, normalise_log
from .mixture import kde_on_grid
from .proposal import draw_a, draw_b, draw_u, encoder_log_weights, log_q_u

__all__ = [
    "galaxy_noise",
    "b_samples",
    "log_weights",
    "log_joint",
    "kish_ess",
    "support_mask",
    "GridPosterior",
    "grid_posterior",
    "HMCPosterior",
    "hmc_posterior",
    "LogPx",
    "log_px",
    "SNISPosterior",
    "snis_posterior",
]

Params = Mapping[str, Any]
_LOG_2PI = math.log(2.0 * math.pi)
DEFAULT_MAX_ROWS = 2**17


# --------------------------------------------------------------------------------------------
# Pure per-galaxy functions
# --------------------------------------------------------------------------------------------
def galaxy_noise(key: jax.Array, index: jnp.ndarray, n: int, dim_b: int, dim_a: int
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Fixed standard-normal noise of one galaxy: ``(eps_b (n, dim_b), eps_a (n, dim_a))``.

    Parameters
    ----------
    key
        The run's PRNG key (``PRNGKey(seed)``).
    index
        The galaxy's index in the catalogue; its noise is drawn from ``fold_in(key, index)``.
    """
    kb, ka = jax.random.split(jax.random.fold_in(key, index))
    return jax.random.normal(kb, (n, dim_b)), jax.random.normal(ka, (n, dim_a))


def b_samples(params: Params, x: jnp.ndarray, eps_b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``b_k = mu_b(x) + tau_b sigma_b(x) eps_b[k]`` (the model's tempered proposal,
    :mod:`photovaez.proposal`) and ``log q(b_k | x)``: (N, B) and (N,)."""
    return draw_b(params, params["proposal"], x, eps_b)


def _log_weights_given_b(params: Params, x: jnp.ndarray, b: jnp.ndarray, log_qb: jnp.ndarray,
                         eps_a: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """log w_k(z) (N,) for given b samples; ``z`` is a scalar."""
    n = b.shape[0]
    zn = jnp.broadcast_to(z, (n,))
    xn = jnp.broadcast_to(x, (n, x.shape[-1]))
    a, log_qa = draw_a(params, params["proposal"], x, b, zn, eps_a)
    log_pb = log_normal_diag(b, *p_b_given_az(params, a, zn))
    # z, not zn: the sed decoder interpolates its tables once for all k
    return log_p_x_given_abz(params, xn, a, b, z) + log_pb + log_p_a(a) - log_qa - log_qb


def log_weights(params: Params, x: jnp.ndarray, z: jnp.ndarray, eps_b: jnp.ndarray, eps_a: jnp.ndarray
                ) -> jnp.ndarray:
    """Importance log-weights ``log w_k(z)`` of one galaxy at one redshift, (N,).

    ``log w_k = log p(x|a_k,b_k,z) + log p(b_k|a_k,z) + log p(a_k) - log q(a_k|x,b_k,z) - log q(b_k|x)``
    (without ``log p(z)``).  ``x`` is (D_x,), ``z`` a scalar, ``eps_b`` (N, B), ``eps_a`` (N, A).
    """
    b, log_qb = b_samples(params, x, eps_b)
    return _log_weights_given_b(params, x, b, log_qb, eps_a, z)


def _log_joint_given_b(params: Params, x: jnp.ndarray, b: jnp.ndarray, log_qb: jnp.ndarray,
                       eps_a: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    lw = _log_weights_given_b(params, x, b, log_qb, eps_a, z)
    return log_p_z(params, z, x) + logsumexp(lw) - math.log(lw.shape[0])


def log_joint(params: Params, x: jnp.ndarray, z: jnp.ndarray, eps_b: jnp.ndarray, eps_a: jnp.ndarray
              ) -> jnp.ndarray:
    """Importance-sampled ``log p(x, z)`` of one galaxy at one redshift (scalar).

    ``log p(z) + log (1/N) sum_k w_k(z)`` with the fixed noise ``eps_b`` (N, B), ``eps_a`` (N, A):
    a smooth deterministic function of ``z``.  Vectorise with ``jax.vmap`` (over ``z`` with
    ``in_axes=(None, None, 0, None, None)``, over galaxies with ``(None, 0, None/0, 0, 0)``).
    """
    b, log_qb = b_samples(params, x, eps_b)
    return _log_joint_given_b(params, x, b, log_qb, eps_a, z)


def kish_ess(log_w: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` of log-weights along ``axis``."""
    return jnp.exp(2.0 * logsumexp(log_w, axis=axis) - logsumexp(2.0 * log_w, axis=axis))


# --------------------------------------------------------------------------------------------
# Chunking helpers
# --------------------------------------------------------------------------------------------
def _pad_last(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` (1-d, non-empty) padded to ``size`` with its last element: one compiled shape per call site."""
    return np.concatenate([a, np.full(size - len(a), a[-1])]) if len(a) < size else a


def _chunks(n: int, size: int):
    """(start, indices padded to ``size`` with the last row, number of real rows)."""
    for s in range(0, n, size):
        idx = np.arange(s, min(n, s + size))
        yield s, _pad_last(idx, size), len(idx)


def _as_x(x: np.ndarray, params: Params) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != params["static"].dim_obs:
        raise ValueError(f"x must be observation rows (n_galaxies, {params['static'].dim_obs}) "
                         f"(photovaez.observations), got {x.shape}")
    return x


def _dtype(params: Params):
    return params["logz_mean"].dtype


@partial(jax.jit, static_argnames=("n",))
def _setup_chunk(params: Params, key: jax.Array, index: jnp.ndarray, x: jnp.ndarray, n: int):
    """Per galaxy of a chunk: b samples, log q(b|x) and eps_a."""
    st = params["static"]
    eps_b, eps_a = jax.vmap(lambda i: galaxy_noise(key, i, n, st.dim_b, st.dim_a))(index)
    eps_b, eps_a = eps_b.astype(x.dtype), eps_a.astype(x.dtype)
    b, log_qb = jax.vmap(b_samples, in_axes=(None, 0, 0))(params, x, eps_b)
    return b, log_qb, eps_a


@jax.jit
def _pairs(params: Params, x: jnp.ndarray, b: jnp.ndarray, log_qb: jnp.ndarray, eps_a: jnp.ndarray,
           gi: jnp.ndarray, z: jnp.ndarray):
    """log p(x, z) and the Kish ESS of the weights for (galaxy-in-chunk, z) pairs."""
    def one(g, zz):
        lw = _log_weights_given_b(params, x[g], b[g], log_qb[g], eps_a[g], zz)
        lj = log_p_z(params, zz, x[g]) + logsumexp(lw) - math.log(lw.shape[0])
        return lj, kish_ess(lw)
    return jax.vmap(one)(gi, z)


# --------------------------------------------------------------------------------------------
# Where the grid posterior is evaluated, and where HMC starts
# --------------------------------------------------------------------------------------------
@jax.jit
def _q_z_at_mean_b(params: Params, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and width of log z under q(z | b = mu_b(x), x) for galaxies x (G, D_x): (G,), (G,)."""
    mu_b, _ = q_b_given_x(params, x)
    mu, logvar = q_z_given_bx(params, mu_b, x)
    return mu[:, 0], jnp.exp(0.5 * logvar[:, 0])


def support_mask(zgrid: np.ndarray, pdf: np.ndarray, tol: float = 1e-4, margin: float = 0.5,
                 margin_abs: float = 0.05) -> np.ndarray:
    """Grid points where a PDF has mass: the central ``1 - tol`` interval of its CDF, in log z,
    widened on each side by ``margin`` times its width plus ``margin_abs``.  (G, nz) booleans."""
    zgrid = np.asarray(zgrid, dtype=np.float64)
    p, _ = normalise(zgrid, pdf)
    cdf = cdf_on_grid(zgrid, p)
    nz = len(zgrid)
    lo = zgrid[np.clip(np.argmax(cdf >= 0.5 * tol, axis=1) - 1, 0, nz - 1)]
    hi = zgrid[np.clip(np.argmax(cdf >= 1.0 - 0.5 * tol, axis=1) + 1, 0, nz - 1)]
    tiny = max(zgrid[zgrid > 0].min() if np.any(zgrid > 0) else 1e-3, 1e-6)
    llo, lhi = np.log(np.maximum(lo, tiny)), np.log(np.maximum(hi, tiny))
    w = lhi - llo
    llo, lhi = llo - margin * w - margin_abs, lhi + margin * w + margin_abs
    with np.errstate(divide="ignore"):
        lz = np.log(zgrid)
    return (lz[None, :] >= llo[:, None]) & (lz[None, :] <= lhi[:, None])


# --------------------------------------------------------------------------------------------
# Grid posterior
# --------------------------------------------------------------------------------------------
@dataclass
class GridPosterior:
    """Result of :func:`grid_posterior` (numpy arrays, G galaxies, nz grid points).

    Attributes
    ----------
    pdf
        (G, nz) p(z|x) at the grid points, unit trapezoid integral (flat where nothing finite).
    log_joint
        (G, nz) importance-sampled log p(x, z); ``-inf`` where not evaluated (z <= 0 or outside
        the support).
    kish_ess
        (G, nz) Kish ESS of the N importance weights at each evaluated z (NaN elsewhere).
    ess_at_mode
        (G,) Kish ESS at the posterior's highest grid point.
    log_px_grid
        (G,) log of the trapezoid integral of p(x, z) over the grid (log p(x) restricted to the grid).
    n_evaluated
        (G,) number of grid points evaluated.
    flag
        (G,) 1 where no finite PDF came out (flat PDF returned), else 0.
    """

    pdf: np.ndarray
    log_joint: np.ndarray
    kish_ess: np.ndarray
    ess_at_mode: np.ndarray
    log_px_grid: np.ndarray
    n_evaluated: np.ndarray
    flag: np.ndarray


def grid_posterior(
    params: Params, x: np.ndarray, zgrid: np.ndarray, n_importance: int = 256, seed: int = 0,
    support: np.ndarray | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    chunk_galaxies: int = 256,
    index_offset: int = 0,
) -> GridPosterior:
    """p(z|x) from the importance-sampled log p(x, z) on the redshift grid, normalised exactly.

    Parameters
    ----------
    params
        Exported parameters (:func:`photovaez.export.export_params`).
    x
        Standardised features, (G, D_x).
    zgrid
        Redshift grid; points with z <= 0 get density 0 (p(z) is log-normal).
    n_importance
        N, the number of (a, b) importance samples per galaxy (held fixed across z).
    seed
        Fixes the noise (galaxy i uses ``fold_in(PRNGKey(seed), i)``).
    support
        ``None``: evaluate every grid point.  A (G, nz) boolean mask: evaluate only there, e.g.
        where the amortised q(z|x) has mass (:func:`support_mask`); elsewhere the density is set
        to 0.  This saves work in proportion to the grid fraction skipped, but posterior mass far
        outside the mask (where the encoder is badly wrong) is lost.
    max_rows
        Cap on galaxies x redshifts x samples per compiled call (memory bound).
    chunk_galaxies
        Galaxies whose noise and b samples are held at once.
    index_offset
        Catalogue index of ``x[0]``: galaxy ``i`` of ``x`` draws its noise from
        ``fold_in(PRNGKey(seed), index_offset + i)``, so a chunked run equals a single one.
    """
    x = _as_x(x, params)
    zgrid = np.asarray(zgrid, dtype=np.float64)
    G, nz = len(x), len(zgrid)
    dt = _dtype(params)
    mask = np.broadcast_to(zgrid > 0, (G, nz)).copy()
    if support is not None:
        mask &= np.asarray(support, bool)
    L = np.full((G, nz), -np.inf)
    K = np.full((G, nz), np.nan)
    n_pairs = max(1, int(max_rows) // int(n_importance))
    cg = max(1, min(int(chunk_galaxies), G))
    key = jax.random.PRNGKey(seed)
    zj = jnp.asarray(zgrid, dt)
    for s, idx, real in _chunks(G, cg):
        xc = jnp.asarray(x[idx], dt)
        b, log_qb, eps_a = _setup_chunk(params, key, jnp.asarray(idx + index_offset), xc, int(n_importance))
        gi, zi = np.nonzero(mask[s : s + real])
        if len(gi) == 0:
            continue
        for p0 in range(0, len(gi), n_pairs):
            m = len(gi[p0 : p0 + n_pairs])
            g_blk, z_blk = _pad_last(gi[p0 : p0 + n_pairs], n_pairs), _pad_last(zi[p0 : p0 + n_pairs], n_pairs)
            lj, ess = _pairs(params, xc, b, log_qb, eps_a, jnp.asarray(g_blk), zj[z_blk])
            L[s + g_blk[:m], z_blk[:m]] = np.asarray(lj, np.float64)[:m]
            K[s + g_blk[:m], z_blk[:m]] = np.asarray(ess, np.float64)[:m]
    L = np.where(np.isnan(L), -np.inf, L)  # NaN -> no mass
    pdf, flag, log_px_grid = normalise_log(zgrid, L)
    k = np.argmax(L, axis=1)
    return GridPosterior(pdf, L, K, K[np.arange(G), k], log_px_grid, mask.sum(1), flag)


# --------------------------------------------------------------------------------------------
# HMC (NUTS in u = log z), one chain per galaxy
# --------------------------------------------------------------------------------------------
def _potential_gen(params: Params, x: jnp.ndarray, b: jnp.ndarray, log_qb: jnp.ndarray, eps_a: jnp.ndarray):
    """NumPyro ``potential_fn_gen``: U(u) = -(log p(x, e^u) + u) (``+u``: the Jacobian of z = e^u)."""
    def potential(u):
        return -(_log_joint_given_b(params, x, b, log_qb, eps_a, jnp.exp(u)) + u)
    return potential


@partial(jax.jit, static_argnames=("num_warmup", "num_samples", "max_tree_depth", "target_accept"))
def _hmc_chunk(params, keys, x, b, log_qb, eps_a, u0, s0, *, num_warmup: int, num_samples: int,
               max_tree_depth: int, target_accept: float):
    from numpyro.infer.hmc import hmc
    from numpyro.util import fori_collect

    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen, algo="NUTS")

    def run_one(key, xi, bi, lqbi, eai, u0i, s0i):
        args = (params, xi, bi, lqbi, eai)
        state = init_kernel(u0i, num_warmup, step_size=1.0, inverse_mass_matrix=jnp.reshape(s0i**2, (1,)),
                            target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                            model_args=args, rng_key=key)
        return fori_collect(
            num_warmup, num_warmup + num_samples, lambda s: sample_kernel(s, model_args=args), state,
            transform=lambda s: (s.z, s.diverging, s.num_steps, s.adapt_state.step_size), progbar=False)

    return jax.vmap(run_one)(keys, x, b, log_qb, eps_a, u0, s0)


@dataclass
class HMCPosterior:
    """Result of :func:`hmc_posterior` (numpy arrays).

    Attributes
    ----------
    z
        (G, num_samples) posterior samples of z.
    pdf
        (G, nz) KDE of the samples in log z, cell-averaged on the grid, unit integral.
    divergences
        (G,) divergent transitions among the kept samples.
    ess
        (G,) effective sample size of log z (numpyro.diagnostics.effective_sample_size).
    mean_steps
        (G,) mean number of leapfrog steps per kept sample.
    step_size
        (G,) adapted step size (in the units of the adapted mass matrix).
    flag
        (G,) 1 where no finite PDF came out, else 0.
    """

    z: np.ndarray
    pdf: np.ndarray
    divergences: np.ndarray
    ess: np.ndarray
    mean_steps: np.ndarray
    step_size: np.ndarray
    flag: np.ndarray


def hmc_posterior(
    params: Params, x: np.ndarray, zgrid: np.ndarray, n_importance: int = 64,
    num_warmup: int = 300,
    num_samples: int = 500,
    max_tree_depth: int = 6,
    target_accept: float = 0.8,
    seed: int = 0,
    chunk_galaxies: int = 64,
    max_rows: int = DEFAULT_MAX_ROWS,
    bandwidth: float | None = None,
    index_offset: int = 0,
) -> HMCPosterior:
    """Sample p(z|x) with NUTS in ``u = log z`` on the importance-sampled :func:`log_joint`.

    One chain per galaxy, each with its own step-size and (diagonal) mass-matrix adaptation,
    vmapped over a chunk of galaxies through NumPyro's functional ``hmc(potential_fn_gen=...,
    algo="NUTS")`` and ``fori_collect``.  The potential is ``-(log p(x, e^u) + u)``.  The chain
    starts at the mean of log z under q(z | b = mu_b(x), x) (the amortised mode of one
    log-normal component) with the initial inverse mass set to its variance.  The importance
    noise is the same as in :func:`grid_posterior` with the same ``seed`` and ``n_importance``,
    so both target the same density (HMC on (0, inf), the grid on [zmin, zmax]).

    A batched NUTS iteration costs the longest trajectory in the chunk: keep ``max_tree_depth``
    small (5-7 is plenty in one dimension) and the chunks moderate.

    Parameters
    ----------
    n_importance
        N, importance samples of (a, b) per potential evaluation.
    num_warmup, num_samples
        Adaptation and kept iterations per chain.
    seed
        Fixes the importance noise and the chains' keys.
    chunk_galaxies
        Chains run together (also capped so that chunk x N <= ``max_rows``).
    bandwidth
        KDE bandwidth in log z for the grid PDF (default: Silverman's rule per galaxy).
    """
    from numpyro.diagnostics import effective_sample_size

    x = _as_x(x, params)
    G = len(x)
    dt = _dtype(params)
    mu_u, sig_u = (np.asarray(v, np.float64) for v in _q_z_at_mean_b(params, jnp.asarray(x, dt)))
    cg = max(1, min(int(chunk_galaxies), G, int(max_rows) // int(n_importance)))
    key = jax.random.PRNGKey(seed)
    chain_key = jax.random.fold_in(key, 2**31 - 1)
    zs = np.empty((G, num_samples))
    div = np.empty(G, np.int64)
    steps = np.empty(G)
    eps = np.empty(G)
    for s, idx, real in _chunks(G, cg):
        xc = jnp.asarray(x[idx], dt)
        b, log_qb, eps_a = _setup_chunk(params, key, jnp.asarray(idx + index_offset), xc, int(n_importance))
        keys = jax.vmap(lambda i: jax.random.fold_in(chain_key, i))(jnp.asarray(idx + index_offset))
        u, d, n, st = _hmc_chunk(
            params, keys, xc, b, log_qb, eps_a, jnp.asarray(mu_u[idx], dt), jnp.asarray(sig_u[idx], dt),
            num_warmup=int(num_warmup), num_samples=int(num_samples), max_tree_depth=int(max_tree_depth),
            target_accept=float(target_accept))
        zs[s : s + real] = np.exp(np.asarray(u, np.float64).reshape(len(idx), num_samples))[:real]
        div[s : s + real] = np.asarray(d).reshape(len(idx), num_samples).sum(1)[:real]
        steps[s : s + real] = np.asarray(n, np.float64).reshape(len(idx), num_samples).mean(1)[:real]
        eps[s : s + real] = np.asarray(st, np.float64).reshape(len(idx), num_samples)[:real, -1]
    lu = np.log(zs)
    ess = np.asarray(effective_sample_size(lu.T[None]), np.float64) if num_samples >= 2 else np.ones(G)
    pdf, flag = normalise(np.asarray(zgrid, np.float64), kde_on_grid(lu, zgrid, bandwidth=bandwidth))
    return HMCPosterior(zs, pdf, div, ess, steps, eps, flag)


# --------------------------------------------------------------------------------------------
# IWAE log p(x) and self-normalised importance sampling of (z, a, b)
# --------------------------------------------------------------------------------------------
def _joint_proposal(params: Params, x: jnp.ndarray, key: jax.Array, n: int, n_defensive: int = 0,
                    z_range: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(log z samples (n,), log-weights (n,)) of one galaxy with (z, a, b) from the tempered encoder.

    With ``n_defensive > 0`` the last ``n_defensive`` redshifts are drawn instead uniformly on
    ``z_range = (z_lo, z_hi)`` (stratified: one per equal slice), b and a from the encoder as
    before, and every draw is weighted against the mixture ``(1 - f) q(z | b, x) + f U(z_lo, z_hi)``
    with ``f = n_defensive / n`` (deterministic-mixture weights): a defensive component that puts
    draws wherever the posterior may have mass the encoder misses.
    """
    st = params["static"]
    prop = params["proposal"]
    kb, kz, ka, kd = jax.random.split(key, 4)
    dt = x.dtype
    eps_b = jax.random.normal(kb, (n, st.dim_b), dt)
    eps_z = jax.random.normal(kz, (n,), dt)
    eps_a = jax.random.normal(ka, (n, st.dim_a), dt)
    if n_defensive == 0:
        return encoder_log_weights(params, prop, x, eps_b, eps_z, eps_a)
    b, log_qb = draw_b(params, prop, x, eps_b)
    u_enc, _ = draw_u(params, prop, b, x, eps_z)
    z_lo, z_hi = z_range[0], z_range[1]
    strata = (jnp.arange(n_defensive, dtype=dt) + jax.random.uniform(kd, (n_defensive,), dt)) / n_defensive
    u = jnp.concatenate([u_enc[: n - n_defensive], jnp.log(z_lo + (z_hi - z_lo) * strata)])
    z = jnp.exp(u)
    f = n_defensive / n
    in_range = (z >= z_lo) & (z <= z_hi)
    log_qz = jnp.logaddexp(math.log1p(-f) + log_q_u(params, prop, u, b, x) - u,
                           jnp.where(in_range, math.log(f) - jnp.log(z_hi - z_lo), -jnp.inf))
    a, log_qa = draw_a(params, prop, x, b, z, eps_a)
    return u, log_p_xzab(params, x, a, b, z) - log_qa - log_qz - log_qb


@partial(jax.jit, static_argnames=("n", "n_defensive"))
def _proposal_chunk(params: Params, key: jax.Array, index: jnp.ndarray, x: jnp.ndarray, n: int,
                    n_defensive: int = 0, z_range: jnp.ndarray | None = None, round_: int | jnp.ndarray = 0):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), round_))(index)
    return jax.vmap(_joint_proposal, in_axes=(None, 0, 0, None, None, None))(params, x, keys, n, n_defensive, z_range)


def _proposal(params: Params, x: np.ndarray, n: int, seed: int, max_rows: int, keep_samples: bool,
              index_offset: int = 0, n_defensive: int = 0, z_range: tuple[float, float] | None = None,
              min_ess: float = 0.0, max_rounds: int = 1, indices: np.ndarray | None = None):
    """Joint encoder draws of every galaxy in rounds of ``n``: round 0 for all, round r > 0 for the
    galaxies whose Kish ESS over all their draws so far is still below ``min_ess`` (up to
    ``max_rounds`` rounds).  Returns log p(x), the Kish ESS, the number of draws per galaxy and, with
    ``keep_samples``, the (G, n * rounds) log z draws and log-weights (-inf where not drawn).
    Galaxy g's draws are keyed by its catalogue index, ``indices[g]`` or ``index_offset + g``."""
    x = _as_x(x, params)
    G = len(x)
    cat_index = np.arange(G) + index_offset if indices is None else np.asarray(indices, np.int64)
    dt = _dtype(params)
    cg = max(1, int(max_rows) // int(n))
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 2)
    zr = None if z_range is None else jnp.asarray(z_range, dt)
    max_rounds = max(1, int(max_rounds))
    width = n * max_rounds if keep_samples else n
    us = np.zeros((G, width))
    lws = np.full((G, width), -np.inf)
    lse = np.full(G, -np.inf)  # logsumexp of the weights so far
    lse2 = np.full(G, -np.inf)  # ... of the squared weights
    n_draws = np.zeros(G, np.int64)
    todo = np.arange(G)
    ess = np.zeros(G)
    for r in range(max_rounds):
        if len(todo) == 0:
            break
        # chunks padded to a power of two (at most cg): few compiled shapes whatever the number of
        # galaxies (the auto mode's subsets, the later rounds)
        size = min(cg, 1 << int(np.ceil(np.log2(len(todo)))))
        for _, pos, real in _chunks(len(todo), size):
            gal = todo[pos]
            u, lw = _proposal_chunk(params, key, jnp.asarray(cat_index[gal]), jnp.asarray(x[gal], dt), int(n),
                                    int(n_defensive), zr, r)
            g = gal[:real]
            lw64 = np.asarray(lw, np.float64)[:real]
            lw64 = np.where(np.isnan(lw64), -np.inf, lw64)
            with np.errstate(divide="ignore", invalid="ignore"):
                lse[g] = np.logaddexp(lse[g], scipy_logsumexp(lw64, axis=1))
                lse2[g] = np.logaddexp(lse2[g], scipy_logsumexp(2.0 * lw64, axis=1))
            n_draws[g] += n
            col = slice(r * n, (r + 1) * n) if keep_samples else slice(0, n)
            us[g, col] = np.asarray(u, np.float64)[:real]
            lws[g, col] = lw64
        with np.errstate(invalid="ignore"):
            ess = np.nan_to_num(np.exp(2.0 * lse - lse2))
        todo = np.flatnonzero(ess < min_ess) if min_ess > 0 else todo[:0]
    with np.errstate(divide="ignore", invalid="ignore"):
        lpx = lse - np.log(n_draws)
    return lpx, ess, n_draws, (us if keep_samples else None), (lws if keep_samples else None)


@dataclass
class LogPx:
    """IWAE log p(x) per galaxy and the Kish ESS of its N weights."""

    log_px: np.ndarray
    kish_ess: np.ndarray


def log_px(params: Params, x: np.ndarray, n_importance: int = 256, seed: int = 0,
           max_rows: int = DEFAULT_MAX_ROWS, index_offset: int = 0) -> LogPx:
    """IWAE estimate ``log (1/N) sum_k p(x, z_k, a_k, b_k) / q(z_k, a_k, b_k | x)`` per galaxy.

    (b, z, a) ~ q(b|x) q(z|b,x) q(a|x,b,z).  A lower bound in expectation, tight as N grows;
    used as the outlier score (low log p(x): photometry unlike the training data).

    Parameters
    ----------
    x
        Standardised features (G, D_x).
    n_importance
        N samples per galaxy.
    """
    lpx, ess, _, _, _ = _proposal(params, x, n_importance, seed, max_rows, keep_samples=False,
                                  index_offset=index_offset)
    return LogPx(lpx, ess)


@dataclass
class SNISPosterior:
    """Result of :func:`snis_posterior`: the PDF on the grid, log p(x), the Kish ESS of all the
    galaxy's weights, the number of draws it got and the flag."""

    pdf: np.ndarray
    log_px: np.ndarray
    kish_ess: np.ndarray
    n_draws: np.ndarray
    flag: np.ndarray


def snis_posterior(params: Params, x: np.ndarray, zgrid: np.ndarray, n_importance: int = 512, seed: int = 0,
                   max_rows: int = DEFAULT_MAX_ROWS, bandwidth: float | None = None,
                   index_offset: int = 0, defensive: float = 0.1, min_ess: float = 64.0,
                   max_rounds: int = 4, indices: np.ndarray | None = None) -> SNISPosterior:
    """Self-normalised importance sampling of p(z|x): (z, a, b) drawn jointly from the model's
    proposal (the tempered encoder, :mod:`photovaez.proposal`), weights
    ``p(x, z, a, b) / q(z, a, b | x)``, PDF by a weighted Gaussian KDE in log z
    (:func:`kde_on_grid`; the bandwidth uses the Kish ESS).  The same draws give the IWAE log p(x).

    Parameters
    ----------
    n_importance
        Draws per galaxy per round.
    defensive
        Fraction of the draws whose redshift is uniform on the grid's range (z > 0), weighted
        against the mixture with the encoder (:func:`_joint_proposal`); 0 = the encoder alone.
    min_ess, max_rounds
        Galaxies whose Kish ESS is below ``min_ess`` get another ``n_importance`` draws, up to
        ``max_rounds`` rounds in all (more samples only where the weights are degenerate).
    indices
        Catalogue indices of the rows of ``x`` (they key the draws); default
        ``index_offset + arange(G)``.
    """
    zgrid = np.asarray(zgrid, np.float64)
    if not 0.0 <= float(defensive) < 1.0:
        raise ValueError(f"snis_defensive must be in [0, 1), got {defensive!r}")
    n_def = int(round(float(defensive) * int(n_importance)))
    z_pos = zgrid[zgrid > 0]
    if n_def and len(z_pos) < 2:
        n_def = 0
    z_range = (float(z_pos.min()), float(z_pos.max())) if n_def else None
    lpx, ess, n_draws, u, lw = _proposal(params, x, n_importance, seed, max_rows, keep_samples=True,
                                         index_offset=index_offset, n_defensive=n_def, z_range=z_range,
                                         min_ess=float(min_ess), max_rounds=int(max_rounds), indices=indices)
    used = int(n_draws.max()) if len(n_draws) else 0
    u, lw = u[:, :used], lw[:, :used]
    with np.errstate(invalid="ignore"):
        w = np.nan_to_num(np.exp(lw - scipy_logsumexp(lw, axis=1, keepdims=True)))
    pdf, flag = normalise(zgrid, kde_on_grid(u, zgrid, weights=w, bandwidth=bandwidth))
    return SNISPosterior(pdf, lpx, ess, n_draws, flag)
