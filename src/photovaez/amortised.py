"""Amortised photo-z PDFs (SPEC Estimation 1, draft Eq. 20-22)::

    q(z | x) ~ (1/K) sum_k q(z | b_k, x),   b_k = mu_b(x) + sigma_b(x) eps_k,   eps_k ~ N(0, I)

a mixture of K log-normals, given on the redshift grid as exact cell averages
(:func:`photovaez.mixture.cell_masses`), computed by one compiled JAX function of the exported
networks (:mod:`photovaez.export`) from the features to the (tempered) densities on the grid.

The draws ``eps_k`` (:func:`b_draws`) are fixed by the seed and shared by all galaxies, so a
galaxy's PDF does not depend on the chunk or process it is estimated in (up to float32 rounding).
They come in antithetic pairs ``+-r_i u_i`` along orthogonal directions ``u_i`` with chi-distributed
lengths ``r_i``: each draw is still exactly N(0, I), so the mixture is an unbiased estimate of
``E_b q(z|b,x)``, but the pairs cancel the part of ``q(z|b,x)`` that is odd in ``b - mu_b`` (to
first order, the shift of the mixture's mean), which is what independent draws mostly get wrong.
On DC2, 8 such draws match the converged mixture (2,048 draws) better than 16 independent ones
(median max|dCDF| 0.0027 vs 0.0038 over ten seeds), at half the cost.

Work per galaxy (hidden widths h_1..h_L, D_x features, B = dim b): q(b|x) once, ``D_x h_1 + sum
h_l h_{l+1} + h_L (B + 1)`` multiply-adds; q(z|b,x) K times, but the x-part of its first layer
(``x W_x + c + mu_b W_b``) once and only ``B h_1`` per draw; then K x (nz + 1) normal CDFs / densities
on the grid.  With the defaults (512, 256, 128; D_x = 11, B = 10, K = 8) that is 1.5 million
multiply-adds (3.1 MFLOP) per galaxy: :func:`flops_per_galaxy`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .export import activation_function, gaussian_head, mlp_hidden, q_b_given_x, q_z_given_bx
from .grid import cell_edges
from .mixture import cell_masses, split_float64

__all__ = ["b_draws", "flops_per_galaxy", "jax_device", "q_z_given_x_components", "q_z_given_x_on_grid"]

_ROWS_PER_CALL = 4096  # at most this many galaxies per compiled call (the calls of a table are padded to one shape)
_ELEMENTS_PER_CALL = 2**24  # and at most this many (galaxy, draw, cell edge) terms: memory bounded on fine grids


def b_draws(n_b: int, dim_b: int, seed: int) -> np.ndarray:
    """(n_b, dim_b) standard-normal draws fixed by ``seed``, in antithetic orthogonal pairs.

    Draw ``2i`` is ``r_i u_i`` and draw ``2i + 1`` is ``-r_i u_i``, where the directions ``u_i`` of
    each block of ``dim_b`` pairs are the rows of a Haar-random orthogonal matrix and the lengths
    ``r_i`` are chi-distributed with ``dim_b`` degrees of freedom, so every draw is marginally
    N(0, I).  An odd ``n_b`` ends with one unpaired draw.
    """
    if n_b < 1 or dim_b < 1:
        raise ValueError(f"b_draws: need n_b >= 1 and dim_b >= 1, got n_b={n_b}, dim_b={dim_b}")
    rng = np.random.default_rng(int(seed))
    n_dir = (n_b + 1) // 2
    dirs = []
    while len(dirs) < n_dir:
        q, r = np.linalg.qr(rng.standard_normal((dim_b, dim_b)))
        q = q * np.sign(np.diag(r))[None, :]  # Haar (Mezzadri 2007)
        dirs.extend(q.T)
    u = np.asarray(dirs[:n_dir])
    length = np.sqrt(rng.chisquare(dim_b, size=n_dir))
    d = u * length[:, None]
    return np.stack([d, -d], axis=1).reshape(-1, dim_b)[:n_b].astype(np.float32)


def flops_per_galaxy(params: Mapping[str, Any], n_b: int, nz: int) -> dict[str, int]:
    """Work of the amortised PDF of one galaxy: ``network_flops`` (2 x multiply-adds of q(b|x) once
    and of q(z|b,x) per draw, the x-part of its first layer once) and ``grid_evaluations`` (normal
    CDF / density evaluations on the ``nz + 1`` cell edges of the grid, per component)."""
    st = params["static"]

    def macs(net: str) -> list[int]:
        layers = [w.shape for w, _ in params[net]["layers"]] + [params[net]["head"][0].shape]
        return [int(a) * int(b) for a, b in layers]

    qb, qz = macs("q_b_given_x"), macs("q_z_given_bx")
    h1 = params["q_z_given_bx"]["layers"][0][0].shape[1]
    x_part = st.dim_x * h1 + st.dim_b * h1  # x W_x and mu_b W_b: once per galaxy
    per_draw = st.dim_b * h1 + sum(qz[1:])
    return {"network_flops": 2 * (sum(qb) + x_part + n_b * per_draw), "grid_evaluations": n_b * (nz + 1)}


def jax_device(device: str | None, rank: int | None = None) -> Any:
    """The JAX device for a torch-style name: ``cpu``, ``cuda`` / ``gpu`` (the first GPU) or
    ``cuda:k``; None or ``auto`` = a GPU when JAX has one (GPU ``rank % n_gpus``, the rank from
    ``rank`` or the usual MPI environment variables), else the CPU.  A GPU name without a JAX GPU
    is an error."""
    if device is None or str(device) == "auto":
        if jax.default_backend() != "gpu":
            return jax.devices("cpu")[0]
        if rank is None:
            rank = next((int(os.environ[v]) for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
                         if v in os.environ), 0)
        gpus = jax.devices("gpu")
        return gpus[rank % len(gpus)]
    name = str(device)
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return jax.devices("cpu")[0]
    if kind in ("cuda", "gpu"):
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            raise ValueError(f"device={name!r}: JAX sees no GPU here (install jax[cuda12], or use device='cpu')"
                             ) from None
        k = int(index or 0)
        if k >= len(gpus):
            raise ValueError(f"device={name!r}: JAX sees {len(gpus)} GPU(s)")
        return gpus[k]
    raise ValueError(f"device={name!r} is not one of auto, cpu, cuda, cuda:k")


def _components(params: Mapping[str, Any], x: jnp.ndarray, eps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(loc, scale) of log z of the K components, each (N, K), for features x (N, >= D_x)."""
    st = params["static"]
    x = x[..., : st.dim_x]
    mu_b, logvar_b = q_b_given_x(params, x)
    net = params["q_z_given_bx"]
    if not net["layers"]:  # no hidden layer: the network is its (linear) head
        b = mu_b[None] + jnp.exp(0.5 * logvar_b)[None] * eps[:, None, :]
        mu, logvar = q_z_given_bx(params, b, jnp.broadcast_to(x, b.shape[:2] + x.shape[-1:]))
        return mu[..., 0].T, jnp.exp(0.5 * logvar[..., 0]).T
    (w1, c1), rest = net["layers"][0], net["layers"][1:]
    w_x, w_b = w1[: st.dim_x], w1[st.dim_x :]  # input order [x, b], as the torch network
    base = x @ w_x + c1 + mu_b @ w_b  # (N, h1): once per galaxy
    step = (jnp.exp(0.5 * logvar_b)[None] * eps[:, None, :]) @ w_b  # (K, N, h1): sigma_b eps_k W_b
    pre = base[None] + step
    h = mlp_hidden(rest, st.activation, activation_function(st.activation)(pre))
    mu, logvar = gaussian_head(net, st, "q_z_given_bx", h)
    return mu[..., 0].T, jnp.exp(0.5 * logvar[..., 0]).T


@functools.partial(jax.jit, static_argnames=("with_grid",))
def _amortised(params, x, eps, edge_hi, edge_lo, log_widths, inv_cell, inv_temperature, with_grid=True):
    loc, scale = _components(params, x, eps)
    if not with_grid:
        return loc, scale
    k = eps.shape[0]
    mass = cell_masses(loc, jnp.zeros_like(loc), scale, jnp.full(loc.shape, 1.0 / k, loc.dtype), edge_hi, edge_lo,
                       log_widths)
    density = mass * inv_cell[None, :]
    # p^(1/T), scaled by the row maximum (which cancels in the normalisation): logs only where T != 1
    peak = jnp.max(density, axis=1, keepdims=True)
    rel = density / jnp.where(peak > 0, peak, 1.0)
    tempered = jnp.where(rel > 0, jnp.exp(jnp.log(jnp.where(rel > 0, rel, 1.0)) * inv_temperature), 0.0)
    return jnp.where(inv_temperature == 1.0, density, tempered)


def _run(params: Mapping[str, Any], x: np.ndarray, eps: np.ndarray, args: tuple, device: Any,
         with_grid: bool, width: int) -> list[np.ndarray]:
    x = np.asarray(x, np.float32)
    n = len(x)
    # equal calls of at most max_rows rows, rounded up to a multiple of 512: little padding, few shapes
    max_rows = max(512, min(_ROWS_PER_CALL, _ELEMENTS_PER_CALL // (len(eps) * (width + 1)) // 512 * 512))
    n_calls = max(1, -(-n // max_rows))
    rows = -(-max(-(-n // n_calls), 1) // 512) * 512
    outs: list[list[np.ndarray]] = []
    with jax.default_device(jax_device(device)):
        for s in range(0, n, rows):
            chunk = x[s : s + rows]
            pad = rows - len(chunk)
            if pad:
                chunk = np.pad(chunk, ((0, pad), (0, 0)), mode="edge")
            r = _amortised(params, chunk, eps, *args, with_grid=with_grid)
            r = r if isinstance(r, tuple) else (r,)
            outs.append([np.asarray(a)[: rows - pad] for a in r])
    if not outs:
        return [np.zeros((0, width), np.float32)] * (1 if with_grid else 2)
    return [np.concatenate(parts) for parts in zip(*outs)]


def q_z_given_x_components(params: Mapping[str, Any], x: np.ndarray, n_b: int = 8, seed: int = 0,
                           device: str | None = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The log-normal components of the amortised q(z|x): ``(loc, scale)`` of log z, each (N, n_b).

    Parameters
    ----------
    params
        The exported networks (:func:`photovaez.export.export_params`).
    x
        Standardised features or observation rows (N, >= D_x).
    n_b
        Number K of b draws in the mixture (:func:`b_draws`).
    seed
        Fixes the draws (shared by all galaxies).
    device
        Where JAX runs (:func:`jax_device`).
    """
    eps = b_draws(n_b, params["static"].dim_b, seed)
    dummy = (np.zeros(2, np.float32),) * 3 + (np.ones(1, np.float32), np.float32(1.0))
    loc, scale = _run(params, x, eps, dummy, device, with_grid=False, width=n_b)
    return loc, scale


def q_z_given_x_on_grid(params: Mapping[str, Any], x: np.ndarray, zgrid: np.ndarray, n_b: int = 8, seed: int = 0,
                        temperature: float = 1.0, device: str | None = "cpu") -> np.ndarray:
    """Densities of the amortised q(z|x) at the grid points (cell averages), (N, len(zgrid)), float32.

    With ``temperature`` T != 1 each row is ``q^(1/T)`` divided by its maximum (the calibrated PDF
    of :func:`photovaez.calibration.apply_temperature`, not yet normalised); with T = 1 the cell
    averages themselves.  ``params``, ``x``, ``n_b``, ``seed`` and ``device`` are those of
    :func:`q_z_given_x_components`; ``zgrid`` is the redshift grid (RAIL's ``linspace(zmin, zmax, nzbins)``).
    """
    zgrid = np.asarray(zgrid, np.float64)
    edges = cell_edges(zgrid)
    with np.errstate(divide="ignore"):
        log_edges = np.log(edges)
        edge_hi, edge_lo = split_float64(log_edges)
        log_widths = np.where(np.isfinite(log_edges[:-1]), np.diff(log_edges), np.inf).astype(np.float32)
    inv_cell = (1.0 / np.diff(edges)).astype(np.float32)
    eps = b_draws(n_b, params["static"].dim_b, seed)
    args = (edge_hi, edge_lo, log_widths, inv_cell, np.float32(1.0 / float(temperature)))
    (pdf,) = _run(params, x, eps, args, device, with_grid=True, width=len(zgrid))
    return pdf
