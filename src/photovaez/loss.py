"""The semi-supervised SDGM objective of SPEC.md (draft Eq. 2-9).

For a labelled pair (x, z), with b ~ q(b|x) and a ~ q(a|x,b,z)::

    S(x, z)  = -E[ log p(x|a,b,z) + log p(b|a,z) + log p(a) + log p(z) - log q(a|x,b,z) - log q(b|x) ]
    S~(x, z) = S(x, z) + alpha * E_{q(b|x)}[ -log q(z|b,x) ]

For an unlabelled x, with b ~ q(b|x), z ~ q(z|b,x), a ~ q(a|x,b,z)::

    P(x) = -E[ log p(x|a,b,z) + log p(b|a,z) + log p(a) + log p(z)
               - log q(a|x,b,z) - log q(z|b,x) - log q(b|x) ]

    J = sum_labelled S~ + sum_unlabelled P,   alpha = (N_s + N_p) / N_s

Expectations are averages over ``n_samples`` reparameterised draws.  If a mini-batch is a uniform
random draw from the union of both sets, the batch mean of the per-galaxy terms (S~ for labelled,
P for unlabelled) is an unbiased estimate of J / (N_s + N_p): :func:`batch_loss`.
"""

from __future__ import annotations

import torch

from .model import SDGM

__all__ = ["alpha_weight", "labelled_terms", "unlabelled_terms", "batch_loss"]

Terms = dict[str, torch.Tensor]
Noise = dict[str, torch.Tensor]


def alpha_weight(n_labelled: int, n_unlabelled: int) -> float:
    """alpha = (N_s + N_p) / N_s, the weight of the predictive term."""
    if n_labelled <= 0:
        raise ValueError("the semi-supervised loss needs at least one labelled galaxy (N_s = 0)")
    return (n_labelled + n_unlabelled) / n_labelled


def _expand(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unsqueeze(0).expand((n,) + tuple(x.shape))


def _draw(dist, eps: torch.Tensor | None) -> torch.Tensor:
    """Reparameterised draw: ``mean + stddev * eps`` (``eps`` given) or ``dist.rsample()``."""
    if eps is None:
        return dist.rsample()
    return dist.mean + dist.stddev * eps


def _log_densities_given_z(model: SDGM, xs: torch.Tensor, b: torch.Tensor, z: torch.Tensor, q_a,
                           a: torch.Tensor) -> Terms:
    """The log-densities that S and P share, at one draw ``(b, z, a)`` (sample axis not yet averaged).

    Parameters
    ----------
    model
        The SDGM.
    xs
        Observation rows (:mod:`photovaez.observations`; the features x for the mlp decoder and
        the lognormal prior) expanded to (S, N, dim_obs).
    b
        Draws of q(b|x), (S, N, B).
    z
        Redshifts (S, N): the true ones (labelled) or draws of q(z|b,x) (unlabelled).
    q_a, a
        The encoder q(a|x,b,z) and its draws (S, N, A).

    Returns
    -------
    dict of (S, N) tensors
        ``log_p_x_given_abz`` (the decoder's log p(x|a,b,z), not the marginal log p(x) of
        :func:`photovaez.posterior.log_px`), ``log_pb`` (log p(b|a,z)), ``log_pa``, ``log_pz`` and
        ``log_qa`` (log q(a|x,b,z)).  The caller adds ``log_qb`` and ``log_qz``.
    """
    return {
        "log_p_x_given_abz": model.log_p_x_given_abz(xs, a, b, z),
        "log_pb": model.p_b_given_az(a, z).log_prob(b),
        "log_pa": model.p_a(a).log_prob(a),
        "log_pz": model.log_p_z(z, xs),
        "log_qa": q_a.log_prob(a),
    }


def _negative_log_ratio(t: Terms, q_terms: tuple[str, ...]) -> torch.Tensor:
    """``-(log p(x|a,b,z) + log p(b|a,z) + log p(a) + log p(z) - sum of the q_terms)``, summed in
    that order (the order fixes the floating-point result)."""
    s = t["log_p_x_given_abz"] + t["log_pb"] + t["log_pa"] + t["log_pz"]
    for k in q_terms:
        s = s - t[k]
    return -s


def labelled_terms(
    model: SDGM,
    x: torch.Tensor,
    z: torch.Tensor,
    alpha: float,
    n_samples: int = 1,
    noise: Noise | None = None,
) -> Terms:
    """Per-galaxy terms of S~(x, z), each averaged over ``n_samples`` draws.

    Parameters
    ----------
    model
        The SDGM.
    x
        Observation rows (N, dim_obs): the standardised features, then the decoder's columns
        (:mod:`photovaez.observations`).
    z
        True redshifts (N,).
    alpha
        Weight of the predictive term (:func:`alpha_weight`).
    n_samples
        Reparameterised draws per galaxy.
    noise
        Optional fixed standard-normal draws: ``{"b": (S, N, B), "a": (S, N, A)}``.

    Returns
    -------
    dict of (N,) tensors
        The log-densities ``log_p_x_given_abz`` (log p(x|a,b,z)), ``log_pb``, ``log_pa``,
        ``log_pz``, ``log_qa``, ``log_qb`` and ``log_qz`` (log q(z|b,x) at the true z), and ``S``
        and ``S_tilde``.
    """
    noise = noise or {}
    xs, zs = _expand(x, n_samples), _expand(z, n_samples)
    q_b = model.q_b_given_x(xs)
    b = _draw(q_b, noise.get("b"))
    log_qb = q_b.log_prob(b)  # the order the terms are built in fixes the gradient sums to the bit
    q_a = model.q_a_given_xbz(xs, b, zs)
    a = _draw(q_a, noise.get("a"))
    t = {**_log_densities_given_z(model, xs, b, zs, q_a, a), "log_qb": log_qb,
         "log_qz": model.q_z_given_bx(b, xs).log_prob(zs)}
    t = {k: v.mean(0) for k, v in t.items()}
    t["S"] = _negative_log_ratio(t, ("log_qa", "log_qb"))
    t["S_tilde"] = t["S"] - alpha * t["log_qz"]
    return t


def unlabelled_terms(model: SDGM, x: torch.Tensor, n_samples: int = 1, noise: Noise | None = None) -> Terms:
    """Per-galaxy terms of P(x), each averaged over ``n_samples`` draws.

    Parameters
    ----------
    model
        The SDGM.
    x
        Observation rows (N, dim_obs).
    n_samples
        Reparameterised draws per galaxy.
    noise
        Optional fixed standard-normal draws: ``{"b": (S, N, B), "z": (S, N), "a": (S, N, A)}``
        (z = exp(mu + sigma * eps_z)).

    Returns
    -------
    dict of (N,) tensors
        The log-densities of :func:`labelled_terms` (``log_qz`` at the drawn z) and ``P``.
    """
    noise = noise or {}
    xs = _expand(x, n_samples)
    q_b = model.q_b_given_x(xs)
    b = _draw(q_b, noise.get("b"))
    q_z = model.q_z_given_bx(b, xs)
    z = q_z.rsample() if noise.get("z") is None else torch.exp(q_z.loc + q_z.scale * noise["z"])
    q_a = model.q_a_given_xbz(xs, b, z)
    a = _draw(q_a, noise.get("a"))
    t = {**_log_densities_given_z(model, xs, b, z, q_a, a), "log_qb": q_b.log_prob(b), "log_qz": q_z.log_prob(z)}
    t = {k: v.mean(0) for k, v in t.items()}
    t["P"] = _negative_log_ratio(t, ("log_qa", "log_qz", "log_qb"))
    return t


def batch_loss(
    model: SDGM,
    x: torch.Tensor,
    z: torch.Tensor,
    labelled: torch.Tensor,
    alpha: float,
    n_samples: int = 1,
    noise: Noise | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mini-batch estimate of J / (N_s + N_p).

    Parameters
    ----------
    x
        Observation rows (n, dim_obs).
    z
        Redshifts (n,); ignored where ``labelled`` is False.
    labelled
        Boolean mask (n,).
    alpha
        :func:`alpha_weight` of the full training set.
    noise
        Optional fixed draws for every galaxy of the batch: ``{"b": (S, n, B), "a": (S, n, A),
        "z": (S, n)}`` (for tests and deterministic evaluation).

    Returns
    -------
    loss
        ``(sum_labelled S~ + sum_unlabelled P) / n``: unbiased for J / N when the batch is a
        uniform random draw from all N training galaxies.
    report
        Batch means of every term (floats) plus ``n_labelled``.
    """
    n = x.shape[0]
    total = x.new_zeros(())
    report: dict[str, float] = {"n_labelled": float(labelled.sum())}
    if labelled.any():
        nl = {k: v[:, labelled] for k, v in noise.items() if k != "z"} if noise else None
        tl = labelled_terms(model, x[labelled], z[labelled], alpha, n_samples, nl)
        total = total + tl["S_tilde"].sum()
        report.update({f"labelled/{k}": float(v.detach().mean()) for k, v in tl.items()})
    if (~labelled).any():
        nu = {k: v[:, ~labelled] for k, v in noise.items()} if noise else None
        tu = unlabelled_terms(model, x[~labelled], n_samples, nu)
        total = total + tu["P"].sum()
        report.update({f"unlabelled/{k}": float(v.detach().mean()) for k, v in tu.items()})
    loss = total / n
    report["loss"] = float(loss.detach())
    return loss, report
