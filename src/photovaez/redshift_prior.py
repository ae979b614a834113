"""The magnitude-dependent redshift prior p(z | m_ref) of the physics-informed decoder (BPZ's form).

Benitez (2000, ApJ 536, 571, eq. 30) writes the prior of a galaxy of reference magnitude m as::

    p(z | m) = z^alpha exp(-(z / z_m(m))^alpha) / N,     z_m(m) = z0 + km (m - m0),

a generalised gamma distribution in z > 0.  With x = (z / z_m)^alpha the normalisation over
(0, inf) is analytic, N = z_m^(alpha+1) Gamma((alpha+1)/alpha) / alpha, so::

    log p = log alpha - log z_m + alpha u - exp(alpha u) - log Gamma(1 + 1/alpha),   u = log(z / z_m)

(:func:`log_p_z_given_m`; the same density as ``scipy.stats.gengamma(a=(alpha+1)/alpha, c=alpha,
scale=z_m)``).  Its mean is z_m Gamma((alpha+2)/alpha) / Gamma((alpha+1)/alpha)
(:func:`mean_z_given_m`), which grows with m when km > 0: fainter galaxies lie further away.

Options and what is left out.

* alpha may vary with magnitude, log-linearly so that it stays positive:
  alpha(m) = alpha exp(alpha_slope (m - m0)) (``alpha_slope = 0``, the default, is BPZ's form).
* z_m must be positive where the straight line is not (bright m with km > 0, or faint m with
  km < 0): it is z_m = z_min + s softplus((z0 + km (m - m0) - z_min) / s) with z_min =
  :data:`Z_M_MIN` (5e-3) and s = :data:`Z_M_SOFTNESS` (1e-3), which equals the straight line to
  1e-13 relative wherever it is above 0.04 and never falls below z_min, so log p stays finite
  (BPZ clips m and z_m instead; clipping has no gradient).
* BPZ's type dependence p(z, t | m) = p(t | m) p(z | t, m) (one alpha, z0, km per template class,
  and the type fractions p(t | m)) is not built in.  The parameters broadcast against z and m, so
  per-class priors p(z | t, m) are parameters of shape (T,) with z and m given a trailing axis;
  the type fractions are the decoder's business (its latent type).
* The HDFN prior that BPZ and RAIL's pz-rail-bpz ship (Benitez 2000, Table 1; m the F814W
  magnitude, m0 = 20, m clipped to [20, 32]) has, for the E/S0, Sbc/Scd and Irr classes,
  alpha = 2.465, 1.806, 0.906; z0 = 0.431, 0.390, 0.0626; km = 0.0913, 0.0636, 0.123.  These
  values are quoted here for reference (a possible starting point), not used or tested; PhotoVAEz
  does not depend on RAIL's BPZ.

Training.  :class:`BPZPriorParams` holds the constrained parameters; :class:`BPZPriorRaw` the
unconstrained ones that gradient descent moves (alpha = softplus(alpha_raw), z0 =
softplus(z0_raw), km and alpha_slope free); :func:`constrain` and :func:`unconstrain` map between
them.  The torch module :class:`MagnitudeRedshiftPrior` holds the raw parameters, gives
``log_prob(z, m)``, and :meth:`MagnitudeRedshiftPrior.init_from_labels` fits them by maximum
likelihood to labelled (z, m) pairs, so the prior starts where the labels are and the model's
loss can then move it with the unlabelled galaxies.

The formulae are written once for numpy, torch and jax.numpy (the ``xp`` argument), as in
:mod:`photovaez.flux_likelihood`; log Gamma is the one function whose name differs
(:func:`log_gamma`).  This module imports torch only if it is installed: the functions work
without it (the JAX export).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from .backend import special_function

try:
    import torch
    _TorchModule: Any = torch.nn.Module
except ImportError:  # the JAX export runs without torch; only MagnitudeRedshiftPrior needs it
    torch = None
    _TorchModule = object

__all__ = ["Z_M_MIN", "Z_M_SOFTNESS", "BPZPriorParams", "BPZPriorRaw", "softplus", "softplus_inverse", "log_gamma",
           "constrain", "unconstrain", "alpha_of_m", "z_m_of_m", "log_p_z_given_m", "mean_z_given_m",
           "MagnitudeRedshiftPrior"]

Z_M_MIN = 5e-3
"""The floor of z_m: z_m = Z_M_MIN + s softplus((line - Z_M_MIN) / s) > Z_M_MIN (:func:`z_m_of_m`)."""

Z_M_SOFTNESS = 1e-3
"""The scale s of z_m's smooth floor: z_m equals the straight line above Z_M_MIN + 35 s = 0.04."""


class BPZPriorParams(NamedTuple):
    """The constrained parameters of p(z | m) (floats or arrays of one library, broadcasting).

    ``alpha`` > 0 is the shape at m0, ``z0`` > 0 the scale z_m at m0, ``km`` its slope dz_m / dm,
    ``m0`` the reference magnitude (fixed, not trained), ``alpha_slope`` d ln(alpha) / dm (0: BPZ).
    """

    alpha: Any
    z0: Any
    km: Any
    m0: Any
    alpha_slope: Any = 0.0


class BPZPriorRaw(NamedTuple):
    """The unconstrained parameters: alpha = softplus(alpha_raw), z0 = softplus(z0_raw); km and
    alpha_slope as they are."""

    alpha_raw: Any
    z0_raw: Any
    km: Any
    alpha_slope: Any = 0.0


def softplus(x: Any, xp: ModuleType = np) -> Any:
    """log(1 + e^x), stably for either sign of x: max(x, 0) + log1p(e^-|x|), in ``xp``'s library."""
    ax = xp.abs(x)
    return 0.5 * (x + ax) + xp.log1p(xp.exp(-ax))


def softplus_inverse(y: Any) -> np.ndarray:
    """The x with softplus(x) = y > 0 (numpy): y + log(1 - e^-y)."""
    y = np.asarray(y, dtype=np.float64)
    if not np.all(y > 0):
        raise ValueError(f"softplus_inverse: y must be > 0, got {y}")
    return y + np.log(-np.expm1(-y))


def log_gamma(x: Any, xp: ModuleType = np) -> Any:
    """log Gamma(x) for x > 0 in ``xp``'s library (:func:`photovaez.backend.special_function`)."""
    return special_function("gammaln", xp)(x)


def constrain(raw: BPZPriorRaw, m0: Any, xp: ModuleType = np) -> BPZPriorParams:
    """The constrained :class:`BPZPriorParams` of unconstrained ``raw`` (softplus on alpha and z0)."""
    return BPZPriorParams(softplus(raw.alpha_raw, xp), softplus(raw.z0_raw, xp), raw.km, m0, raw.alpha_slope)


def unconstrain(params: BPZPriorParams) -> BPZPriorRaw:
    """The unconstrained :class:`BPZPriorRaw` (numpy float64) of ``params`` (alpha, z0 > 0)."""
    return BPZPriorRaw(softplus_inverse(params.alpha), softplus_inverse(params.z0),
                       np.asarray(params.km, dtype=np.float64), np.asarray(params.alpha_slope, dtype=np.float64))


def _in(x: Any, xp: ModuleType, like: Any = None) -> Any:
    """``x`` in ``xp``'s library; in torch a non-tensor takes the dtype of the tensor ``like``."""
    if xp.__name__ != "torch":
        return xp.asarray(x)
    if isinstance(x, xp.Tensor):
        return x
    return xp.as_tensor(x, dtype=like.dtype if isinstance(like, xp.Tensor) else xp.float64)


def alpha_of_m(m: Any, params: BPZPriorParams, xp: ModuleType = np) -> Any:
    """alpha(m) = alpha exp(alpha_slope (m - m0)) (alpha itself when alpha_slope = 0)."""
    m = _in(m, xp)
    return _in(params.alpha, xp, m) * xp.exp(_in(params.alpha_slope, xp, m) * (m - _in(params.m0, xp, m)))


def z_m_of_m(m: Any, params: BPZPriorParams, xp: ModuleType = np) -> Any:
    """z_m(m) = z0 + km (m - m0), floored smoothly: z_min + s softplus((line - z_min) / s).

    z_min = :data:`Z_M_MIN`, s = :data:`Z_M_SOFTNESS`: the straight line to 1e-13 relative above
    z_min + 35 s = 0.04, and never below z_min.
    """
    m = _in(m, xp)
    line = _in(params.z0, xp, m) + _in(params.km, xp, m) * (m - _in(params.m0, xp, m))
    return Z_M_MIN + Z_M_SOFTNESS * softplus((line - Z_M_MIN) / Z_M_SOFTNESS, xp)


def log_p_z_given_m(z: Any, m: Any, params: BPZPriorParams, xp: ModuleType = np) -> Any:
    """log p(z | m), BPZ's prior normalised over z in (0, inf).

    With alpha = :func:`alpha_of_m`, z_m = :func:`z_m_of_m` and u = log(z / z_m)::

        log p = log alpha - log z_m + alpha u - exp(alpha u) - log Gamma(1 + 1/alpha).

    Parameters
    ----------
    z : array
        Redshifts > 0 (z = 0 gives -inf, whose torch gradient is nan).
    m : array
        Reference magnitudes, broadcasting against ``z`` and the parameters.
    params : BPZPriorParams
        Constrained parameters (:func:`constrain` of raw ones to train them).
    xp : module
        numpy, torch or jax.numpy; numpy inputs are converted.

    Returns
    -------
    array
        The broadcast shape of z, m and the parameters, in xp's library.
    """
    z = _in(z, xp)
    m = _in(m, xp, z)
    alpha = alpha_of_m(m, params, xp)
    log_zm = xp.log(z_m_of_m(m, params, xp))
    au = alpha * (xp.log(z) - log_zm)
    return xp.log(alpha) - log_zm + au - xp.exp(au) - log_gamma(1.0 + 1.0 / alpha, xp)


def mean_z_given_m(m: Any, params: BPZPriorParams, xp: ModuleType = np) -> Any:
    """E[z | m] = z_m Gamma((alpha + 2) / alpha) / Gamma((alpha + 1) / alpha)."""
    alpha = alpha_of_m(m, params, xp)
    return z_m_of_m(m, params, xp) * xp.exp(log_gamma(1.0 + 2.0 / alpha, xp) - log_gamma(1.0 + 1.0 / alpha, xp))


class MagnitudeRedshiftPrior(_TorchModule):
    """p(z | m_ref) as a torch module with trainable unconstrained parameters (needs torch).

    Parameters
    ----------
    params : BPZPriorParams, optional
        The starting point (default alpha 2, z0 0.5, km 0.1, m0 22, no alpha slope); each
        parameter a scalar or an array (e.g. one per template class).
    fit_alpha_slope : bool
        Whether alpha_slope is a trained parameter (else a buffer fixed at its start value).
    dtype : torch.dtype
        The parameters' dtype (default float32; float64 for gradcheck).
    """

    def __init__(self, params: BPZPriorParams | None = None, fit_alpha_slope: bool = False,
                 dtype: Any = None) -> None:
        if torch is None:
            raise ImportError("MagnitudeRedshiftPrior needs torch; log_p_z_given_m works without it")
        super().__init__()
        params = BPZPriorParams(2.0, 0.5, 0.1, 22.0) if params is None else params
        raw = unconstrain(params)
        dtype = torch.float32 if dtype is None else dtype

        def tensor(v):
            return torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype)

        self.alpha_raw = torch.nn.Parameter(tensor(raw.alpha_raw))
        self.z0_raw = torch.nn.Parameter(tensor(raw.z0_raw))
        self.km = torch.nn.Parameter(tensor(raw.km))
        if fit_alpha_slope:
            self.alpha_slope = torch.nn.Parameter(tensor(raw.alpha_slope))
        else:
            self.register_buffer("alpha_slope", tensor(raw.alpha_slope))
        self.register_buffer("m0", tensor(params.m0))

    def raw(self) -> BPZPriorRaw:
        """The unconstrained parameters (tensors, in the graph)."""
        return BPZPriorRaw(self.alpha_raw, self.z0_raw, self.km, self.alpha_slope)

    def params(self) -> BPZPriorParams:
        """The constrained parameters (tensors, in the graph)."""
        return constrain(self.raw(), self.m0, torch)

    def params_numpy(self) -> BPZPriorParams:
        """The constrained parameters as float64 numpy arrays (for the JAX export or numpy)."""
        return BPZPriorParams(*(np.asarray(p.detach().cpu().numpy(), dtype=np.float64) for p in self.params()))

    def log_prob(self, z: Any, m: Any) -> Any:
        """log p(z | m) (:func:`log_p_z_given_m`) of tensors z > 0 and m, differentiable in the
        parameters and in z."""
        return log_p_z_given_m(z, m, self.params(), torch)

    def mean_z(self, m: Any) -> Any:
        """E[z | m] (:func:`mean_z_given_m`)."""
        return mean_z_given_m(m, self.params(), torch)

    def init_from_labels(self, z: Any, m: Any, m0: float | None = None, steps: int = 100,
                         adam_steps: int = 200) -> float:
        """Fit the parameters by maximum likelihood to labelled pairs (z > 0, m); returns the final
        mean negative log-likelihood.

        m0 is set to ``m0`` (default: the median of m, which decorrelates z0 from km) and the
        other parameters start from a moment match at alpha = 2 (z0 and km from a straight-line
        fit of z against m, alpha_slope as it is); then ``adam_steps`` Adam steps (learning rate
        0.02, the slopes per standard deviation of m) and L-BFGS with a strong-Wolfe line search,
        ``steps`` iterations at most, in float64 (the module keeps its own dtype).  The parameters must be
        scalars.
        """
        z = np.asarray(z, dtype=np.float64).ravel()
        m = np.asarray(m, dtype=np.float64).ravel()
        if z.shape != m.shape or z.size < 3:
            raise ValueError(f"init_from_labels: z {z.shape} and m {m.shape} must be the same size, >= 3")
        if not (np.all(np.isfinite(z)) and np.all(z > 0) and np.all(np.isfinite(m))):
            raise ValueError("init_from_labels: z must be finite and > 0, m finite (drop stars and bad labels)")
        if any(p.ndim for p in self.raw()):
            raise ValueError("init_from_labels: fits scalar parameters only")
        m0 = float(np.median(m)) if m0 is None else float(m0)
        # Start from a moment match at alpha = 2: E[z | m] = 0.886 z_m(m), a straight line in m
        # (least squares), its slope shrunk until z_m stays above a quarter of z0 over the sample.
        gamma_ratio = math.exp(math.lgamma(2.0) - math.lgamma(1.5))
        km, intercept = np.polyfit(m - m0, z / gamma_ratio, 1)
        z0 = max(float(intercept), 0.1 * float(z.mean()))
        worst = float(np.max(-km * (m - m0)))
        km *= min(1.0, 0.75 * z0 / worst) if worst > 0 else 1.0
        start = unconstrain(BPZPriorParams(2.0, z0, km, m0, float(self.alpha_slope.detach())))
        # The slopes are optimised per standard deviation of m, so that one optimiser step moves
        # every parameter by a comparable amount.
        scale = (1.0, 1.0, float(m.std()) or 1.0, float(m.std()) or 1.0)
        values = [torch.tensor(float(v) * c, dtype=torch.float64, requires_grad=isinstance(p, torch.nn.Parameter))
                  for v, c, p in zip(start, scale, self.raw())]
        zt, mt = torch.from_numpy(z), torch.from_numpy(m)

        def mean_nll():
            raw = BPZPriorRaw(*(v / c for v, c in zip(values, scale)))
            return -log_p_z_given_m(zt, mt, constrain(raw, m0, torch), torch).mean()

        fitted = [v for v in values if v.requires_grad]
        # Adam first (bounded steps: the likelihood is a cliff where z_m reaches its floor), then
        # L-BFGS to converge; an L-BFGS step that falls off the cliff is undone.
        adam = torch.optim.Adam(fitted, lr=0.02)
        for _ in range(adam_steps):
            adam.zero_grad()
            mean_nll().backward()
            adam.step()
        before = [v.detach().clone() for v in values]
        lbfgs = torch.optim.LBFGS(fitted, max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure():
            lbfgs.zero_grad()
            loss = mean_nll()
            loss.backward()
            return loss

        lbfgs.step(closure)
        with torch.no_grad():
            if not all(bool(torch.isfinite(v)) for v in values) or not bool(torch.isfinite(mean_nll())):
                for v, b in zip(values, before):
                    v.copy_(b)
            for p, v, c in zip(self.raw(), values, scale):
                p.copy_(v / c)
            self.m0.fill_(m0)
            return float(mean_nll())
