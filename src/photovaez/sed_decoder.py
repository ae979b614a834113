"""The physics-informed decoder's forward model: a rest-frame SED of the latent type, redshifted through the bands.

A galaxy of latent type ``a`` (and optionally the auxiliary ``b``) has the rest-frame SED

    s(lambda) = sum_t w_t T_t(lambda) (1 + sum_k c_k phi_k(lambda)),

a non-negative mixture of T templates (w = softmax(MLP(a)), w_t >= 0, sum w_t = 1) times a smooth,
bounded, multiplicative correction in *rest-frame* wavelength (template repair: the same
correction acts at every redshift).  The K basis functions phi_k are uniform cubic B-splines in
ln(lambda) (:func:`correction_basis`), each >= 0 and summing to at most 1 at every wavelength
(exactly 1 between the second and the second-to-last centre); the coefficients are
c = c_max tanh(MLP(a)), |c_k| < c_max < 1, so

    1 + sum_k c_k phi_k(lambda) >= 1 - c_max sum_k phi_k(lambda) >= 1 - c_max > 0

and s stays positive wherever a template is, whatever the network outputs.  The basis spans by
default the rest-frame wavelengths that the bands see over the redshift grid; outside it the
correction goes smoothly to zero.

Synthetic photometry is linear in the SED (:func:`photovaez.synphot.band_flux_matrix`), so the
model flux in band j at redshift z is

    m_j(a, z) = exp(delta_j) sum_t w_t [F_tj(z) + sum_k c_k G_tkj(z)],

with F_tj(z) the flux of T_t and G_tkj(z) that of T_t phi_k (the product tabulated on T_t's own
wavelengths) through band j, both tabulated once on a redshift grid (:func:`sed_basis`,
:class:`SEDBasis`, plain arrays for the model file) and interpolated linearly in z, differentiably
(:meth:`RestFrameSEDDecoder.band_fluxes`).  delta_j are optional per-band zero-point offsets
(learnable, L2-penalised, reported in magnitudes).  Each template is divided by its mean flux
over the bands and the redshift grid, so the mixture weights compare templates of one
brightness and the fluxes are of order 1.  The likelihood of observed fluxes is
:func:`photovaez.flux_likelihood.log_p_flux` (amplitude marginalised) with a learnable intrinsic
fractional error (:meth:`RestFrameSEDDecoder.log_p_x_given_abz`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .filters import FilterCurve, filter_support
from .flux_likelihood import log_p_flux
from .model import ACTIVATIONS
from .synphot import flux_table_grid, redshifted_fluxes
from .templates import SED

__all__ = ["DEFAULT_N_CORRECTION", "DEFAULT_CORRECTION_MAX", "SEDBasis", "correction_basis", "sed_basis",
           "RestFrameSEDDecoder"]

DEFAULT_N_CORRECTION = 8
"""The default number K of rest-frame correction basis functions."""

DEFAULT_CORRECTION_MAX = 0.3
"""The default bound c_max on each correction coefficient (|c_k| < c_max)."""

_ARRAYS = ("z", "flux", "correction_flux", "wavelength", "template_flux", "template_scale")


def correction_basis(wavelength: Any, log_centres: Any, log_width: float, xp: Any = np) -> Any:
    """Uniform cubic B-splines in ln(lambda): phi_k(lambda) = B((ln lambda - ln lambda_k) / h).

    B(x) = (4 - 6 x^2 + 3 |x|^3) / 6 for |x| < 1, (2 - |x|)^3 / 6 for 1 <= |x| < 2, 0 beyond: C^2,
    in [0, 2/3], and with centres spaced by h the phi_k sum to 1 between the second and the
    second-to-last centre and to less than 1 elsewhere.

    Parameters
    ----------
    wavelength : array
        (n,) rest-frame wavelengths in Angstrom, > 0.
    log_centres : array
        (K,) ln of the centres, spaced by ``log_width``.
    log_width : float
        h, the spacing in ln(lambda).
    xp : module
        numpy or torch.

    Returns
    -------
    array
        (K, n) phi_k(wavelength).
    """
    log_lam = xp.log(xp.clip(wavelength, 1e-30, None))  # lambda = 0 (some templates start there): phi = 0
    x = xp.clip(xp.abs((log_lam[None, :] - log_centres[:, None]) / log_width), None, 2.0)
    inner = (4.0 - 6.0 * x ** 2 + 3.0 * x ** 3) / 6.0
    outer = (2.0 - x) ** 3 / 6.0
    return xp.where(x < 1.0, inner, outer)


class SEDBasis(NamedTuple):
    """The decoder's tables: templates and their correction functions through the bands on a z grid.

    Attributes
    ----------
    z : numpy.ndarray
        (nz,) the redshift grid (strictly increasing) of both tables.
    flux : numpy.ndarray
        (T, B, nz) F_tj(z), the AB flux of each (normalised) template through each band.
    correction_flux : numpy.ndarray
        (T, K, B, nz) G_tkj(z), the flux of T_t phi_k.
    templates, bands : list of str
        Names.
    wavelength : numpy.ndarray
        (n,) rest-frame wavelengths (the union of the templates' points) of ``template_flux``.
    template_flux : numpy.ndarray
        (T, n) the normalised templates on ``wavelength`` (for :meth:`RestFrameSEDDecoder.rest_frame_sed`).
    template_scale : numpy.ndarray
        (T,) the factor each template file's f_lambda was multiplied by (1 / its mean band flux).
    log_centres : numpy.ndarray
        (K,) ln of the correction's B-spline centres (Angstrom).
    log_width : float
        Their spacing h in ln(lambda).
    """

    z: np.ndarray
    flux: np.ndarray
    correction_flux: np.ndarray
    templates: list
    bands: list
    wavelength: np.ndarray
    template_flux: np.ndarray
    template_scale: np.ndarray
    log_centres: np.ndarray
    log_width: float

    @property
    def n_templates(self) -> int:
        return self.flux.shape[0]

    @property
    def n_correction(self) -> int:
        return self.correction_flux.shape[1]

    @property
    def n_bands(self) -> int:
        return self.flux.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """The basis as plain data (numpy arrays, lists of str, a float), for a model file."""
        d = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        d.update(templates=list(self.templates), bands=list(self.bands),
                 log_centres=np.asarray(self.log_centres), log_width=float(self.log_width))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SEDBasis:
        """The basis from :meth:`to_dict`'s dict, its shapes checked."""
        missing = [k for k in cls._fields if k not in d]
        if missing:
            raise ValueError(f"SEDBasis.from_dict: missing keys {missing}")
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in (*_ARRAYS, "log_centres")}
        basis = cls(templates=[str(s) for s in d["templates"]], bands=[str(s) for s in d["bands"]],
                    log_width=float(d["log_width"]), **arrays)
        t, b, nz, k = len(basis.templates), len(basis.bands), len(basis.z), len(basis.log_centres)
        if basis.z.ndim != 1 or nz < 2 or not np.all(np.diff(basis.z) > 0):
            raise ValueError("SEDBasis.from_dict: z must be strictly increasing, at least 2 points")
        expected = {"flux": (t, b, nz), "correction_flux": (t, k, b, nz), "template_flux": (t, len(basis.wavelength)),
                    "template_scale": (t,)}
        for name, shape in expected.items():
            if getattr(basis, name).shape != shape:
                raise ValueError(f"SEDBasis.from_dict: {name} has shape {getattr(basis, name).shape}, "
                                 f"expected {shape}")
        if not basis.log_width > 0:
            raise ValueError("SEDBasis.from_dict: log_width must be > 0")
        return basis


def _seen_range(curves: Sequence[FilterCurve], z: np.ndarray) -> tuple[float, float]:
    """The rest-frame wavelengths that the bands see over the redshifts z."""
    supports = [filter_support(c) for c in curves]
    return min(s[0] for s in supports) / (1.0 + z[-1]), max(s[1] for s in supports) / (1.0 + z[0])


def sed_basis(seds: Sequence[SED], curves: Sequence[FilterCurve], zgrid: np.ndarray | None = None,
              n_correction: int = DEFAULT_N_CORRECTION,
              wavelength_range: tuple[float, float] | None = None) -> SEDBasis:
    """Tabulate the templates and their correction functions through the bands (numpy).

    Parameters
    ----------
    seds : sequence of SED
        The rest-frame templates of the mixture.
    curves : sequence of FilterCurve
        The bands, in the catalogue's order.
    zgrid : numpy.ndarray, optional
        (nz,) strictly increasing redshifts (default :func:`photovaez.synphot.flux_table_grid`).
    n_correction : int
        K >= 2, the number of correction B-splines (0 for none).
    wavelength_range : (float, float), optional
        The rest-frame wavelengths (Angstrom) of the first and the last B-spline centre; default
        the range the bands see over ``zgrid``, cut to the templates' own range.

    Returns
    -------
    SEDBasis
    """
    z = flux_table_grid() if zgrid is None else np.asarray(zgrid, dtype=np.float64)
    if n_correction == 1 or n_correction < 0:
        raise ValueError(f"sed_basis: n_correction must be 0 or >= 2, got {n_correction}")
    table = redshifted_fluxes(seds, curves, z)  # checks z, seds and curves
    scale = 1.0 / table.flux.mean(axis=(1, 2))
    if wavelength_range is None:
        lo, hi = _seen_range(curves, z)
        lo = max(lo, min(float(s.wavelength[s.flux > 0][0]) for s in seds))
        hi = min(hi, max(float(s.wavelength[s.flux > 0][-1]) for s in seds))
    else:
        lo, hi = (float(v) for v in wavelength_range)
    if not 0 < lo < hi:
        raise ValueError(f"sed_basis: the correction's wavelength range ({lo}, {hi}) must satisfy 0 < lo < hi")
    k = max(n_correction, 2)
    log_centres = np.linspace(math.log(lo), math.log(hi), k)[:n_correction]
    log_width = (math.log(hi) - math.log(lo)) / (k - 1)
    products = [SED(f"{s.name}*phi{j}", s.wavelength,
                    s.flux * correction_basis(np.asarray(s.wavelength, dtype=np.float64), log_centres[j:j + 1],
                                              log_width)[0])
                for s in seds for j in range(n_correction)]
    correction = np.zeros((len(seds), n_correction, len(curves), len(z)))
    if products:
        correction = redshifted_fluxes(products, curves, z).flux.reshape(correction.shape)
    wavelength = np.unique(np.concatenate([np.asarray(s.wavelength, dtype=np.float64) for s in seds]))
    template_flux = np.stack([np.interp(wavelength, s.wavelength, s.flux, left=0.0, right=0.0) for s in seds])
    return SEDBasis(z, table.flux * scale[:, None, None], correction * scale[:, None, None, None],
                    list(table.templates), list(table.bands), wavelength, template_flux * scale[:, None], scale,
                    log_centres, float(log_width))


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class RestFrameSEDDecoder(nn.Module):
    """p(fluxes | a, b, z): a template mixture with a rest-frame correction, redshifted through the bands.

    Parameters
    ----------
    basis : SEDBasis
        The tables (:func:`sed_basis`); stored as buffers (they follow ``.to()`` / ``.double()``).
    a_dim : int
        The latent type's dimension.
    b_dim : int
        The auxiliary variable's dimension, 0 (default) if the SED does not depend on b.
    hidden : sequence of int
        Hidden widths of the network from (a, b) to the weights' logits and the corrections.
    activation : str
        A key of :data:`photovaez.model.ACTIVATIONS`.
    correction_max : float
        c_max in (0, 1): |c_k| < c_max keeps the SED positive (the module's docstring); 0 turns the
        correction off.
    intrinsic_frac : float
        The initial intrinsic fractional flux error (softplus-parameterised, learnable).
    zero_points : bool
        Learn per-band zero-point offsets exp(delta_j) on the model fluxes (init 0).
    zero_point_sigma : float
        The width of :meth:`zero_point_penalty`'s Gaussian prior on delta_j (natural-log flux).
    reference_band : int, optional
        If given, the likelihood's amplitude is the flux in this band: the model fluxes are divided
        by their value in it before :func:`~photovaez.flux_likelihood.log_p_flux`, so the flat
        amplitude prior is a flat prior on that band's flux, the same for every type and redshift
        (without it, a template that is faint through the bands at some z would be favoured there
        by the marginal's 1/amplitude-scale factor).
    dtype : torch.dtype
        Of the tables and the parameters (default float32).  Build a float64 decoder with
        ``dtype=torch.float64``: ``.double()`` on a float32 one keeps the tables' float32 rounding.
    """

    def __init__(self, basis: SEDBasis, a_dim: int, b_dim: int = 0, hidden: Sequence[int] = (64, 64),
                 activation: str = "silu", correction_max: float = DEFAULT_CORRECTION_MAX,
                 intrinsic_frac: float = 0.05, zero_points: bool = False, zero_point_sigma: float = 0.05,
                 reference_band: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not 0.0 <= correction_max < 1.0:
            raise ValueError(f"RestFrameSEDDecoder: correction_max must be in [0, 1), got {correction_max}")
        if not intrinsic_frac > 0 or not zero_point_sigma > 0:
            raise ValueError("RestFrameSEDDecoder: intrinsic_frac and zero_point_sigma must be > 0")
        if reference_band is not None and not 0 <= int(reference_band) < basis.n_bands:
            raise ValueError(f"RestFrameSEDDecoder: reference_band {reference_band} is not a band index "
                             f"(0..{basis.n_bands - 1})")
        self.basis = basis
        self.reference_band = None if reference_band is None else int(reference_band)
        self.a_dim, self.b_dim = int(a_dim), int(b_dim)
        self.correction_max = float(correction_max)
        self.zero_point_sigma = float(zero_point_sigma)
        n_t, n_k = basis.n_templates, basis.n_correction
        self.register_buffer("z_grid", torch.as_tensor(basis.z, dtype=dtype))
        # (nz, T, B) and (nz, T, K, B): indexed by the redshift's interval first
        self.register_buffer("flux_table", torch.as_tensor(np.moveaxis(basis.flux, -1, 0), dtype=dtype))
        self.register_buffer("correction_table",
                             torch.as_tensor(np.moveaxis(basis.correction_flux, -1, 0), dtype=dtype))
        # each grid interval's (value at its start, slope): one gather per interpolation; derived, not
        # stored, and rebuilt whenever the tables are loaded
        self._build_intervals()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._build_intervals())
        self.net = _mlp(self.a_dim + self.b_dim, list(hidden), n_t + n_k, activation)
        with torch.no_grad():  # start from the plain template mixture: zero correction
            self.net[-1].weight[n_t:].zero_()
            self.net[-1].bias[n_t:].zero_()
        self.intrinsic_raw = nn.Parameter(torch.tensor(_inverse_softplus(intrinsic_frac)))
        self.zero_point_delta = nn.Parameter(torch.zeros(basis.n_bands)) if zero_points else None
        self.to(dtype)

    def _build_intervals(self) -> None:
        for name in ("flux_table", "correction_table"):
            t = getattr(self, name)
            self.register_buffer(name + "_intervals", torch.stack([t[:-1], t[1:] - t[:-1]], dim=1), persistent=False)

    @property
    def intrinsic_frac(self) -> torch.Tensor:
        """The learned intrinsic fractional error epsilon = softplus(raw) > 0."""
        return nn.functional.softplus(self.intrinsic_raw)

    def weights_and_correction(self, a: torch.Tensor,
                               b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """w = softmax(logits) (..., T) and c = c_max tanh(raw) (..., K) of the type a (and b)."""
        inputs = a if self.b_dim == 0 else torch.cat([a, b], dim=-1)
        h = self.net(inputs)
        n_t = self.basis.n_templates
        return torch.softmax(h[..., :n_t], dim=-1), self.correction_max * torch.tanh(h[..., n_t:])

    def _interpolate(self, intervals: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A table linearly interpolated at z (...) -> (z.shape, ...), z clamped to the grid, from its
        ``intervals`` (nz - 1, 2, ...): each grid interval's value at its start and its slope per unit u."""
        grid = self.z_grid
        zc = torch.clamp(z, grid[0], grid[-1])
        k = torch.clamp(torch.searchsorted(grid, zc.detach().contiguous(), right=True) - 1, 0, len(grid) - 2)
        u = (zc - grid[k]) / (grid[k + 1] - grid[k])
        pieces = torch.index_select(intervals, 0, k.reshape(-1)).view(k.shape + intervals.shape[1:])
        u = u.reshape(u.shape + (1,) * (intervals.dim() - 2))
        return torch.addcmul(pieces.select(k.dim(), 0), pieces.select(k.dim(), 1), u)

    def fluxes_of(self, w: torch.Tensor, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Model band fluxes (..., B) of mixture weights w (..., T) and corrections c (..., K) at z (...).

        m_j = exp(delta_j) sum_t w_t [F_tj(z) + sum_k c_k G_tkj(z)], the tables interpolated linearly
        in z (differentiable in z; z outside the grid is clamped to its ends, with zero gradient).
        """
        f = torch.einsum("...t,...tb->...b", w, self._interpolate(self.flux_table_intervals, z))
        if c.shape[-1]:
            g = self._interpolate(self.correction_table_intervals, z)
            f = f + torch.einsum("...t,...k,...tkb->...b", w, c, g)
        if self.zero_point_delta is not None:
            f = f * torch.exp(self.zero_point_delta)
        return f

    def band_fluxes(self, a: torch.Tensor, z: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """Model fluxes (..., B) of type a (..., A) (and b) at redshift z (...), up to the amplitude."""
        w, c = self.weights_and_correction(a, b)
        return self.fluxes_of(w, c, z)

    def rest_frame_sed(self, a: torch.Tensor, wavelength: np.ndarray | None = None,
                       b: torch.Tensor | None = None) -> torch.Tensor:
        """The rest-frame SED s(lambda) (..., n) of type a on ``wavelength`` (default the basis's).

        s = sum_t w_t T_t(lambda) (1 + sum_k c_k phi_k(lambda)), the templates normalised as in the
        tables (linear between their points, zero outside); for plots and diagnostics.
        """
        w, c = self.weights_and_correction(a, b)
        return self.sed_of(w, c, wavelength)

    def sed_of(self, w: torch.Tensor, c: torch.Tensor, wavelength: np.ndarray | None = None) -> torch.Tensor:
        """The rest-frame SED (..., n) of mixture weights w (..., T) and corrections c (..., K)."""
        basis = self.basis
        lam = basis.wavelength if wavelength is None else np.asarray(wavelength, dtype=np.float64)
        templates = np.stack([np.interp(lam, basis.wavelength, t, left=0.0, right=0.0) for t in basis.template_flux])
        phi = correction_basis(lam, basis.log_centres, basis.log_width)
        templates = torch.as_tensor(templates, dtype=w.dtype, device=w.device)
        phi = torch.as_tensor(phi, dtype=w.dtype, device=w.device)
        return (w @ templates) * (1.0 + c @ phi)

    def log_p_x_given_abz(self, flux: torch.Tensor, flux_err: torch.Tensor, a: torch.Tensor, z: torch.Tensor,
                          b: torch.Tensor | None = None, intrinsic_frac: Any = None) -> torch.Tensor:
        """log p(fluxes | a, b, z) (...): :func:`photovaez.flux_likelihood.log_p_flux` of the model fluxes.

        The amplitude is marginalised (flat prior A >= 0; A the flux in ``reference_band`` when
        that is set); ``intrinsic_frac`` defaults to the learned one.
        """
        eps = self.intrinsic_frac if intrinsic_frac is None else intrinsic_frac
        model = self.band_fluxes(a, z, b)
        if self.reference_band is not None:
            model = model / model[..., self.reference_band:self.reference_band + 1]
        return log_p_flux(flux, flux_err, model, eps, xp=torch)

    def zero_point_penalty(self) -> torch.Tensor:
        """sum_j delta_j^2 / (2 sigma^2), the L2 penalty on the zero-point offsets (0 when they are off)."""
        if self.zero_point_delta is None:
            return self.intrinsic_raw.new_zeros(())
        return 0.5 * (self.zero_point_delta / self.zero_point_sigma).square().sum()

    def zero_point_offsets_mag(self) -> np.ndarray:
        """(B,) the offsets added to the model magnitudes, -2.5 log10 exp(delta_j) (zeros when off)."""
        if self.zero_point_delta is None:
            return np.zeros(self.basis.n_bands)
        return (-2.5 / math.log(10.0)) * self.zero_point_delta.detach().cpu().double().numpy()
