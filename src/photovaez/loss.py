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

from typing import Dict

import torch

from .model import SDGM

__all__ = ["alpha_weight", "labelled_terms", "unlabelled_terms", "batch_loss"]

Terms = Dict[str, torch.Tensor]
Noise = Dict[str, torch.Tensor]


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


def labelled_terms(
    model: SDGM,
    x: torch.Tensor,
    z: torch.Tensor,
    alpha: float,
    n_samples: int = 1,
    noise: Noise | None = None,
) -> Terms:
    """Per-galaxy terms of S~(x, z), each averaged over ``n_samples`` draws.

    ``noise`` optionally fixes the standard-normal draws: ``{"b": (S, N, B), "a": (S, N, A)}``.

    Returns a dict of (N,) tensors: the log-densities ``log_px`` (log p(x|a,b,z)), ``log_pb``,
    ``log_pa``, ``log_pz``, ``log_qa``, ``log_qb``, ``log_qz`` (log q(z|b,x) at the true z),
    and ``S`` and ``S_tilde``.
    """
    noise = noise or {}
    xs, zs = _expand(x, n_samples), _expand(z, n_samples)
    q_b = model.q_b_given_x(xs)
    b = _draw(q_b, noise.get("b"))
    log_qb = q_b.log_prob(b)
    q_a = model.q_a_given_xbz(xs, b, zs)
    a = _draw(q_a, noise.get("a"))
    t = {
        "log_px": model.p_x_given_abz(a, b, zs).log_prob(xs),
        "log_pb": model.p_b_given_az(a, zs).log_prob(b),
        "log_pa": model.p_a(a).log_prob(a),
        "log_pz": model.p_z().log_prob(zs),
        "log_qa": q_a.log_prob(a),
        "log_qb": log_qb,
        "log_qz": model.q_z_given_bx(b, xs).log_prob(zs),
    }
    t = {k: v.mean(0) for k, v in t.items()}
    t["S"] = -(t["log_px"] + t["log_pb"] + t["log_pa"] + t["log_pz"] - t["log_qa"] - t["log_qb"])
    t["S_tilde"] = t["S"] - alpha * t["log_qz"]
    return t


def unlabelled_terms(model: SDGM, x: torch.Tensor, n_samples: int = 1, noise: Noise | None = None) -> Terms:
    """Per-galaxy terms of P(x), each averaged over ``n_samples`` draws (dict of (N,) tensors).

    ``noise`` optionally fixes the draws: ``{"b": (S, N, B), "z": (S, N), "a": (S, N, A)}``
    (z = exp(mu + sigma * eps_z))."""
    noise = noise or {}
    xs = _expand(x, n_samples)
    q_b = model.q_b_given_x(xs)
    b = _draw(q_b, noise.get("b"))
    q_z = model.q_z_given_bx(b, xs)
    z = q_z.rsample() if noise.get("z") is None else torch.exp(q_z.loc + q_z.scale * noise["z"])
    q_a = model.q_a_given_xbz(xs, b, z)
    a = _draw(q_a, noise.get("a"))
    t = {
        "log_px": model.p_x_given_abz(a, b, z).log_prob(xs),
        "log_pb": model.p_b_given_az(a, z).log_prob(b),
        "log_pa": model.p_a(a).log_prob(a),
        "log_pz": model.p_z().log_prob(z),
        "log_qa": q_a.log_prob(a),
        "log_qb": q_b.log_prob(b),
        "log_qz": q_z.log_prob(z),
    }
    t = {k: v.mean(0) for k, v in t.items()}
    t["P"] = -(
        t["log_px"] + t["log_pb"] + t["log_pa"] + t["log_pz"] - t["log_qa"] - t["log_qz"] - t["log_qb"]
    )
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
        Standardised features (n, D_x).
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
