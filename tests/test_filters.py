"""photovaez.filters: RAIL's filter files, speclite's curves, presets and bad input."""

import numpy as np
import pytest

from photovaez.features import preset
from photovaez.filters import (
    FILTER_PRESETS,
    FilterCurve,
    filter_support,
    load_filter,
    load_filters,
    rail_package_file,
    read_filter_file,
    resolve_path,
    speclite_filter,
)
from rail.photovaez.data import rail_resolver


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_lsst_preset_reads_rails_dc2_curves_in_angstrom():
    curves = load_filters("lsst", rail_resolver)
    assert [c.name for c in curves] == [f"DC2LSST_{b}" for b in "ugrizy"]
    supports = [filter_support(c) for c in curves]
    # Angstrom, whatever the files' header says: u is non-zero from about 3050 to 4090 Angstrom
    assert 3000 <= supports[0][0] < 3100 and 4050 < supports[0][1] < 4150
    assert 9000 < supports[-1][0] < 9100 and 10900 < supports[-1][1] <= 11500
    assert all(a[1] < b[1] for a, b in zip(supports[:-1], supports[1:]))  # bands in wavelength order
    for c in curves:
        assert np.all(np.diff(c.wavelength) > 0) and np.all(c.response >= 0) and c.response.max() < 1


def test_presets_follow_the_feature_presets_bands():
    for name, specs in FILTER_PRESETS.items():
        assert len(specs) == len(preset(name).bands), name
    # sdss_wise: model ugriz, W1, W2, psf ugriz, as photovaez.features.preset("sdss_wise").bands
    for band, spec in zip(preset("sdss_wise").bands, FILTER_PRESETS["sdss_wise"]):
        letter = {"w1mpro": "W1", "w2mpro": "W2"}.get(band, band[-1])
        assert spec.endswith(f"-{letter}"), (band, spec)
    curves = load_filters("sdss_mgs")
    assert [c.name for c in curves] == [f"sdss2010-{b}" for b in "ugriz"]


def test_load_filter_routes_each_kind_of_spec(tmp_path):
    r = load_filter("sdss2010-r")
    assert r.name == "sdss2010-r" and 5300 < filter_support(r)[0] < 5500
    w1 = speclite_filter("wise2010-W1")
    assert 25000 < filter_support(w1)[0] and filter_support(w1)[1] < 41000
    own = _write(tmp_path / "my-band.dat", "# my own band\n1000 0\n1100 0.5\n1200 0.0\n")
    curve = load_filter(own)  # an existing file wins over the speclite reading of a name with '-'
    assert curve.name == "my-band" and np.allclose(curve.response, [0, 0.5, 0])
    again = load_filter(curve)
    assert again.name == curve.name and np.array_equal(again.response, curve.response)
    g = load_filter("rail:examples_data/estimation_data/data/FILTER/DC2LSST_g.res", rail_resolver)
    assert g.name == "DC2LSST_g"
    # without a resolver, the rail namespace package's folders are searched (RAIL's find_rail_file)
    default = load_filter(FILTER_PRESETS["lsst"][1])
    assert default.name == "DC2LSST_g" and np.array_equal(default.response, g.response)
    assert rail_package_file("examples_data/estimation_data/data/FILTER/DC2LSST_g.res") == \
        rail_resolver("examples_data/estimation_data/data/FILTER/DC2LSST_g.res")
    with pytest.raises(ValueError, match="rail:no/such.res.*not in"):
        load_filter("rail:no/such.res")
    assert resolve_path("x/y.res") == "x/y.res"


@pytest.mark.parametrize(
    "text, message",
    [
        ("3000\n3001\n", "1 columns"),
        ("3000 0.1 5\n", "3 columns"),
        ("3000 0\n3001 -0.2\n3002 0\n", "negative response"),
        ("3000 0\n3002 0.2\n3001 0\n", "strictly increasing"),
        ("3000 0\n3001 0\n", "zero everywhere"),
        ("3000 0\n3001 abc\n", "not two numbers"),
        ("# only a comment\n3000 0.1\n", "at least two rows"),
    ],
)
def test_bad_filter_files_name_the_file(tmp_path, text, message):
    path = _write(tmp_path / "bad.res", text)
    with pytest.raises(ValueError, match=message) as err:
        read_filter_file(path)
    assert path in str(err.value)


def test_unknown_speclite_names_list_the_groups():
    for name in ("sdss2010-q", "nosuchgroup-r"):
        with pytest.raises(ValueError, match=name) as err:
            load_filter(name)
        assert "sdss2010" in str(err.value) and "wise2010" in str(err.value)
    with pytest.raises(ValueError, match="not an existing file"):
        load_filter("no_such_file.res")
    with pytest.raises(ValueError, match="unknown filter preset"):
        load_filters("lsst2023")


def test_filter_curve_checks():
    with pytest.raises(ValueError, match="negative"):
        load_filter(FilterCurve("x", np.array([1.0, 2.0, 3.0]), np.array([0.0, -1.0, 0.0])))
    support = filter_support(FilterCurve("x", np.arange(1.0, 8.0), np.array([0, 0, 0, 1, 1, 0, 0.0])))
    assert support == (3.0, 6.0)
