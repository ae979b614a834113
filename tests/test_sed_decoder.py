"""photovaez.sed_decoder: the physics decoder's forward model against the flux tables and an independent
computation of the corrected SED's photometry, its gradients, positivity, storage and a redshift sanity check."""

import io
import pickle

import numpy as np
import pytest
import torch

from photovaez.filters import load_filters
from photovaez.io import _SafeUnpickler
from photovaez.sed_decoder import RestFrameSEDDecoder, SEDBasis, correction_basis, sed_basis
from photovaez.synphot import band_flux_matrix, flux_table_grid, fluxes_at, redshifted_fluxes
from photovaez.templates import load_templates
from rail.photovaez.data import rail_resolver

ZGRID = flux_table_grid(3.0, dz=0.01)


@pytest.fixture(scope="module")
def setup():
    seds = [s for s in load_templates("cwwsb4", rail_resolver) if s.name in ("El_B2004a", "Sbc_B2004a", "Im_B2004a")]
    curves = load_filters("lsst", rail_resolver)
    return seds, curves, sed_basis(seds, curves, ZGRID, n_correction=6)


def _decoder(basis, **kw):
    torch.manual_seed(0)
    return RestFrameSEDDecoder(basis, a_dim=2, hidden=(8,), dtype=torch.float64, **kw)


def _corrected_flux(sed, curve, basis, c, z, scale):
    """The band flux of scale * T(lambda) (1 + sum c_k phi_k(lambda)), computed directly at z."""
    lam = np.asarray(sed.wavelength, dtype=np.float64)
    f = scale * sed.flux * (1.0 + c @ correction_basis(lam, basis.log_centres, basis.log_width))
    return band_flux_matrix(lam, curve, np.atleast_1d(z)) @ f


def test_one_hot_without_correction_is_the_flux_table(setup):
    seds, curves, basis = setup
    dec = _decoder(basis)
    table = redshifted_fluxes(seds, curves, ZGRID)
    z = np.array([0.0, 0.1234, 0.5, 1.777, 2.9999, 3.0])
    expected = fluxes_at(table, z) * basis.template_scale[:, None]  # (n, T, B)
    for t in range(len(seds)):
        w = torch.nn.functional.one_hot(torch.full((len(z),), t), len(seds)).double()
        got = dec.fluxes_of(w, torch.zeros(len(z), basis.n_correction, dtype=torch.float64),
                            torch.as_tensor(z)).numpy()
        np.testing.assert_allclose(got, expected[:, t], rtol=1e-12)


def test_correction_table_matches_the_explicitly_corrected_sed(setup):
    seds, curves, basis = setup
    dec = _decoder(basis)
    rng = np.random.default_rng(1)
    c = rng.uniform(-0.3, 0.3, basis.n_correction)
    zs = np.concatenate([ZGRID, 0.5 * (ZGRID[1:] + ZGRID[:-1])])  # the nodes and the midpoints
    worst_off_grid = 0.0
    for t, sed in enumerate(seds):
        w = torch.nn.functional.one_hot(torch.full((len(zs),), t), len(seds)).double()
        got = dec.fluxes_of(w, torch.as_tensor(c).expand(len(zs), -1), torch.as_tensor(zs)).numpy()
        direct = np.stack([_corrected_flux(sed, cv, basis, c, zs, basis.template_scale[t]) for cv in curves], -1)
        rel = np.abs(got / direct - 1.0)
        assert rel[:len(ZGRID)].max() < 1e-10, (sed.name, rel[:len(ZGRID)].max())  # the same sums, reordered
        worst_off_grid = max(worst_off_grid, rel[len(ZGRID):].max())
    # linear interpolation on the dz = 0.01 grid: measured 1.8e-3 at worst (El in u at z = 0.005, 0.002 mag)
    assert worst_off_grid < 3e-3, worst_off_grid
    # a mixture is the same mixture of the one-hot fluxes
    w = np.array([0.2, 0.5, 0.3])
    mix = dec.fluxes_of(torch.as_tensor(w), torch.as_tensor(c), torch.tensor(0.9)).numpy()
    parts = [dec.fluxes_of(torch.eye(3, dtype=torch.float64)[t], torch.as_tensor(c), torch.tensor(0.9)).numpy()
             for t in range(3)]
    np.testing.assert_allclose(mix, w @ np.array(parts), rtol=1e-12)


def test_gradients_reach_z_a_and_every_parameter(setup):
    _, _, basis = setup
    dec = _decoder(basis, zero_points=True)
    with torch.no_grad():
        dec.zero_point_delta.normal_(0.0, 0.05)
        dec.net[-1].weight.normal_(0.0, 0.5)
    names = [n for n, _ in dec.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in dec.parameters())
    rng = np.random.default_rng(2)
    a = torch.as_tensor(rng.normal(size=(3, 2)), dtype=torch.float64).requires_grad_()
    z = torch.tensor([0.2133, 1.0057, 2.4735], dtype=torch.float64, requires_grad=True)
    flux = torch.as_tensor(rng.uniform(0.5, 2.0, size=(3, 6)))
    err = 0.1 * flux

    wrapped = _LogP(dec)

    def log_p(a, z, *p):
        state = {f"dec.{k}": v for k, v in zip(names, p)}
        return torch.func.functional_call(wrapped, state, (flux, err, a, z))

    assert torch.autograd.gradcheck(log_p, (a, z, *params), eps=1e-6, atol=1e-6)
    out = dec.log_p_x_given_abz(flux, err, a, z).sum()
    out.backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in dec.parameters())
    assert torch.all(z.grad != 0) and torch.all(a.grad != 0)


class _LogP(torch.nn.Module):
    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def forward(self, flux, err, a, z):
        return self.dec.log_p_x_given_abz(flux, err, a, z)


def test_sed_stays_positive_for_extreme_network_outputs(setup):
    _, _, basis = setup
    dec = _decoder(basis)
    with torch.no_grad():
        dec.net[-1].weight.normal_(0.0, 1e4)
    a = torch.randn(50, 2, dtype=torch.float64) * 100
    w, c = dec.weights_and_correction(a)
    assert torch.all(c.abs() <= dec.correction_max) and torch.any(c.abs() > 0.999 * dec.correction_max)
    sed = dec.sed_of(w, c)
    mixture = dec.sed_of(w, torch.zeros_like(c))
    assert torch.all(sed >= (1.0 - dec.correction_max) * mixture * (1 - 1e-12))
    assert torch.all(sed[mixture > 0] > 0)
    log_lam = np.log(np.geomspace(100.0, 1e6, 20001))
    interior = (log_lam > basis.log_centres[1]) & (log_lam < basis.log_centres[-2])
    phi = correction_basis(np.exp(log_lam), basis.log_centres, basis.log_width)
    assert phi.min() >= 0 and phi.sum(0).max() <= 1 + 1e-12
    np.testing.assert_allclose(phi.sum(0)[interior], 1.0, rtol=1e-12)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="correction_max"):
            RestFrameSEDDecoder(basis, 2, correction_max=bad)


def test_basis_round_trip_through_the_restricted_unpickler(setup):
    _, _, basis = setup
    data = pickle.dumps(basis.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    back = SEDBasis.from_dict(_SafeUnpickler(io.BytesIO(data)).load())
    for name in SEDBasis._fields:
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(basis, name)))
    a, z = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0.1, 0.7, 1.3, 2.2], dtype=torch.float64)
    torch.testing.assert_close(_decoder(back).band_fluxes(a, z), _decoder(basis).band_fluxes(a, z), rtol=0, atol=0)
    bad = basis.to_dict()
    bad["correction_flux"] = bad["correction_flux"][:, :-1]
    with pytest.raises(ValueError, match="correction_flux"):
        SEDBasis.from_dict(bad)


def test_likelihood_prefers_the_true_redshift_and_zero_points(setup):
    seds, curves, basis = setup
    dec = _decoder(basis, zero_points=True)
    with torch.no_grad():  # the network outputs one template (Sbc), no correction
        dec.net[-1].weight.zero_()
        dec.net[-1].bias.copy_(torch.tensor([0.0, 60.0, 0.0] + [0.0] * basis.n_correction))
    z_true = 0.83
    truth = np.concatenate([band_flux_matrix(seds[1].wavelength, cv, [z_true]) @ seds[1].flux for cv in curves])
    flux = torch.as_tensor(truth / truth.max() * 37.0)  # any amplitude
    err = 0.02 * flux
    a = torch.zeros(2, dtype=torch.float64)
    z = torch.as_tensor(ZGRID)
    log_p = dec.log_p_x_given_abz(flux, err, a.expand(len(z), 2), z).detach().numpy()
    assert abs(ZGRID[np.argmax(log_p)] - z_true) <= 0.011
    lp = [dec.log_p_x_given_abz(flux, err, a, torch.tensor(v)).item() for v in (z_true, z_true + 0.5, z_true - 0.5)]
    assert lp[0] > lp[1] + 10 and lp[0] > lp[2] + 10
    assert dec.zero_point_penalty().item() == 0.0 and np.all(dec.zero_point_offsets_mag() == 0)
    with torch.no_grad():
        dec.zero_point_delta.fill_(np.log(10 ** 0.04))  # model 0.1 mag brighter
    np.testing.assert_allclose(dec.zero_point_offsets_mag(), -0.1)
    assert dec.zero_point_penalty().item() == pytest.approx(6 * 0.5 * (np.log(10 ** 0.04) / 0.05) ** 2)
    assert _decoder(basis).zero_point_penalty().item() == 0.0
