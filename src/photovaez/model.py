"""The Skip Deep Generative Model of SPEC.md in PyTorch.

Generative model (decoder)::

    p(x, z, a, b) = p(x | a, b, z) p(b | a, z) p(a) p(z)
    p(a) = N(0, I),  p(z) = LogNormal(mu_z, sigma_z^2)  (mu_z, log sigma_z^2 trained)

Inference model (encoder)::

    q(b | x),  q(z | b, x) = LogNormal(...),  q(a | x, b, z)

Each conditional is one :class:`GaussianMLP`: hidden layers (512, 256, 128 by default) and a
linear output of D means plus one shared log-variance (or D log-variances with
``per_dim_variance``).  Networks that take z see the standardised ``log z``.  Densities are
``torch.distributions`` objects, so log-normal log-densities include the 1/z Jacobian.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, LogNormal, Normal

from .config import ModelConfig
from .observations import split_observation

__all__ = ["ModelConfig", "GaussianMLP", "SDGM", "soft_clamp", "ACTIVATIONS"]

ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def soft_clamp(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Smoothly keep ``v`` within (lo, hi): identity well inside, softplus at the edges."""
    v = lo + nn.functional.softplus(v - lo)
    return hi - nn.functional.softplus(hi - v)


class GaussianMLP(nn.Module):
    """MLP giving the mean and log-variance of a diagonal Gaussian over ``out_dim`` dimensions.

    The inputs are concatenated.  The last layer has ``out_dim + 1`` units (shared variance) or
    ``2 * out_dim`` (per-dimension variance), no activation.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: list[int],
        activation: str = "silu",
        per_dim_variance: bool = False,
        logvar_min: float = -9.0,
        logvar_max: float = 4.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.out_dim = out_dim
        self.per_dim_variance = per_dim_variance
        self.head = nn.Linear(width, out_dim * 2 if per_dim_variance else out_dim + 1)
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        self.hidden_dtype: torch.dtype | None = None  # set by SDGM.set_hidden_precision

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(inputs, dim=-1)
        if self.hidden_dtype is None:
            h = self.head(self.body(x))
        else:  # hidden layers in the lower precision (autocast), the head in float32 on float32 inputs
            with torch.autocast(x.device.type, dtype=self.hidden_dtype):
                hidden = self.body(x)
            h = self.head(hidden.to(x.dtype))
        mu, raw = h[..., : self.out_dim], h[..., self.out_dim :]
        logvar = soft_clamp(raw, self.logvar_min, self.logvar_max).expand_as(mu)
        return mu, logvar


def _normal(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


class SDGM(nn.Module):
    """Skip Deep Generative Model over (x, z, a, b); the names follow SPEC.md.

    Buffers ``logz_mean`` / ``logz_std`` standardise ``log z`` for the networks that take z.

    The model reads observation rows ``obs`` (:mod:`photovaez.observations`): the D_x features x
    that the encoder sees, then the decoder's own columns.  The decoder is ``config.decoder``:
    ``"mlp"`` (``p_x_given_abz_net``, a Gaussian over x) or ``"sed"`` (``sed_decoder``, a
    :class:`~photovaez.sed_decoder.RestFrameSEDDecoder` over the band fluxes, built from
    ``sed_basis``).  p(z) is ``config.prior``: ``"lognormal"`` (parameters ``prior_mu_z`` /
    ``prior_log_sigma2_z``) or ``"bpz"`` (``p_z_given_m``, a
    :class:`~photovaez.redshift_prior.MagnitudeRedshiftPrior` of the reference magnitude).

    Parameters
    ----------
    config
        The sizes and options.
    sed_basis
        The template and correction flux tables (:func:`photovaez.sed_decoder.sed_basis`), needed
        by the sed decoder.
    """

    def __init__(self, config: ModelConfig, sed_basis=None) -> None:
        super().__init__()
        self.config = config
        X, A, B = config.dim_x, config.dim_a, config.dim_b
        kw = dict(
            hidden=config.hidden,
            activation=config.activation,
            per_dim_variance=config.per_dim_variance,
            logvar_min=config.logvar_min,
            logvar_max=config.logvar_max,
        )
        self.q_b_given_x_net = GaussianMLP(X, B, **kw)
        self.q_z_given_bx_net = GaussianMLP(X + B, 1, **kw)
        self.q_a_given_xbz_net = GaussianMLP(X + B + 1, A, **kw)
        self.p_b_given_az_net = GaussianMLP(A + 1, B, **kw)
        if config.decoder == "sed":
            from .sed_decoder import RestFrameSEDDecoder

            if sed_basis is None:
                raise ValueError("SDGM: decoder 'sed' needs its sed_basis (photovaez.sed_decoder.sed_basis)")
            if sed_basis.n_bands != config.n_bands:
                raise ValueError(f"SDGM: the sed_basis has {sed_basis.n_bands} bands, model_config.n_bands is "
                                 f"{config.n_bands}")
            self.sed_decoder = RestFrameSEDDecoder(
                sed_basis, A, B if config.sed_uses_b else 0, hidden=config.sed_hidden, activation=config.activation,
                correction_max=config.correction_max, intrinsic_frac=config.intrinsic_error,
                zero_points=config.zero_points, zero_point_sigma=config.zero_point_sigma,
                reference_band=self.reference_band)
        else:
            self.p_x_given_abz_net = GaussianMLP(A + B + 1, X, **{**kw, "logvar_min": config.x_logvar_min})
        if config.prior == "bpz":
            from .redshift_prior import MagnitudeRedshiftPrior

            self.p_z_given_m = MagnitudeRedshiftPrior()
        else:
            self.prior_mu_z = nn.Parameter(torch.tensor(0.0))
            self.prior_log_sigma2_z = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("logz_mean", torch.tensor(0.0))
        self.register_buffer("logz_std", torch.tensor(1.0))

    # -- helpers ---------------------------------------------------------------------------
    def set_hidden_precision(self, dtype: torch.dtype | None) -> None:
        """Run the hidden layers of every Gaussian MLP in ``dtype`` (``torch.bfloat16``, under
        ``torch.autocast``) or, with None, in the parameters' float32.  The output layers, the
        decoder's fluxes and every density stay float32; the parameters stay float32."""
        for m in self.modules():
            if isinstance(m, GaussianMLP):
                m.hidden_dtype = dtype

    @property
    def reference_band(self) -> int | None:
        """Index of the reference band (m_ref, and the sed decoder's amplitude), from the config's
        ``reference_band_index`` (set at training time); None when the model has none."""
        idx = self.config.reference_band_index
        return None if idx < 0 else int(idx)

    def features_of(self, obs: torch.Tensor) -> torch.Tensor:
        """The encoder's features x, the first D_x columns of observation rows (x itself is fine)."""
        return obs[..., : self.config.dim_x]

    def z_input(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised ``log z`` as a column, the z input of the networks."""
        return ((torch.log(z) - self.logz_mean) / self.logz_std).unsqueeze(-1)

    def set_redshift_scale(self, logz_mean: float, logz_std: float) -> None:
        """Set the log-z standardisation and initialise a log-normal p(z) at the same log-normal."""
        with torch.no_grad():
            self.logz_mean.fill_(float(logz_mean))
            self.logz_std.fill_(float(logz_std))
            if self.config.prior == "lognormal":
                self.prior_mu_z.fill_(float(logz_mean))
                self.prior_log_sigma2_z.fill_(float(2.0 * torch.log(torch.tensor(logz_std))))

    # -- distributions ---------------------------------------------------------------------
    def p_a(self, like: torch.Tensor) -> Independent:
        """p(a) = N(0, I), batch shape of ``like`` without its last axis."""
        shape = like.shape[:-1] + (self.config.dim_a,)
        zeros = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def p_z(self) -> LogNormal:
        """p(z) = LogNormal(mu_z, sigma_z^2) with trained parameters (the lognormal prior)."""
        return LogNormal(self.prior_mu_z, torch.exp(0.5 * self.prior_log_sigma2_z))

    def log_p_z(self, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """log p(z) of the model's prior: the log-normal, or BPZ's p(z | m_ref) at the rows' m_ref."""
        if self.config.prior == "bpz":
            return self.p_z_given_m.log_prob(z, obs[..., -1])
        return self.p_z().log_prob(z)

    def q_b_given_x(self, x: torch.Tensor) -> Independent:
        """q(b | x); ``x`` may be observation rows (their features are used)."""
        return _normal(*self.q_b_given_x_net(self.features_of(x)))

    def q_z_given_bx(self, b: torch.Tensor, x: torch.Tensor) -> LogNormal:
        """q(z | b, x); ``x`` may be observation rows."""
        # the network's input is [x, b]: the order of the stored weights
        mu, logvar = self.q_z_given_bx_net(self.features_of(x), b)
        return LogNormal(mu[..., 0], torch.exp(0.5 * logvar[..., 0]))

    def q_a_given_xbz(self, x: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> Independent:
        """q(a | x, b, z); ``x`` may be observation rows."""
        return _normal(*self.q_a_given_xbz_net(self.features_of(x), b, self.z_input(z)))

    def p_b_given_az(self, a: torch.Tensor, z: torch.Tensor) -> Independent:
        return _normal(*self.p_b_given_az_net(a, self.z_input(z)))

    def p_x_given_abz(self, a: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> Independent:
        """The mlp decoder's Gaussian p(x | a, b, z) over the features."""
        if self.config.decoder != "mlp":
            raise AttributeError("p_x_given_abz is the mlp decoder's distribution; use log_p_x_given_abz")
        return _normal(*self.p_x_given_abz_net(a, b, self.z_input(z)))

    def log_p_x_given_abz(self, obs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | a, b, z) of observation rows: the mlp decoder's Gaussian of the features, or
        the sed decoder's flux likelihood of the rows' fluxes (amplitude marginalised)."""
        if self.config.decoder == "sed":
            _, cols = split_observation(obs, self.config)
            return self.sed_decoder.log_p_x_given_abz(cols.flux, cols.flux_err, a, z,
                                                      b if self.config.sed_uses_b else None)
        return self.p_x_given_abz(a, b, z).log_prob(self.features_of(obs))

    def regulariser(self) -> torch.Tensor:
        """The global penalty added to the training objective once (not per galaxy): the sed
        decoder's zero-point prior (0 otherwise)."""
        if self.config.decoder == "sed":
            return self.sed_decoder.zero_point_penalty()
        return self.logz_mean.new_zeros(())

    # -- reparameterised draws and embeddings ----------------------------------------------
    def b_samples(self, x: torch.Tensor, eps_b: torch.Tensor) -> torch.Tensor:
        """``b_k = mu_b(x) + sigma_b(x) eps_b[k]``: (K, N, B) from x (N, D_x) and noise (K, B)."""
        mu_b, logvar_b = self.q_b_given_x_net(self.features_of(x))
        return mu_b[None] + torch.exp(0.5 * logvar_b)[None] * eps_b[:, None, :]

    def latent_means(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding of x: the mean of q(b|x), and the mean of q(a|x, b, z) at that b."""
        x = self.features_of(x)
        mu_b, _ = self.q_b_given_x_net(x)
        mu_a, _ = self.q_a_given_xbz_net(x, mu_b, self.z_input(z))
        return mu_a, mu_b
