"""benchmarks/dc2.py without training: the ``speczlike`` draw, the ``-nounl`` ablations, ``--update``'s merge."""

import importlib.util
import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DC2 = os.path.join(HERE, "..", "benchmarks", "dc2.py")


@pytest.fixture(scope="module")
def dc2():
    spec = importlib.util.spec_from_file_location("photovaez_bench_dc2", DC2)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def training():
    from rail.photovaez.data import read_dc2

    return read_dc2("training")


def test_speczlike_draw_reproducible_and_seeded(dc2):
    rng = np.random.default_rng(5)
    i, z = rng.uniform(18, 25, 2000), rng.uniform(0, 3, 2000)
    a, b = dc2.speczlike_labels(i, z), dc2.speczlike_labels(i, z)
    assert a.dtype == bool and a.shape == (2000,) and np.array_equal(a, b)
    assert np.array_equal(a, dc2.speczlike_labels(i, z, seed=dc2.SPECZLIKE["seed"]))
    assert not np.array_equal(a, dc2.speczlike_labels(i, z, seed=dc2.SPECZLIKE["seed"] + 1))
    # the stated formula, and no label where the photometry is missing
    c = dc2.SPECZLIKE
    p = dc2.speczlike_probability([c["i_lim"], 30.0, np.nan], [0.5, 0.5, 0.5])
    assert p[0] == pytest.approx(c["p0"] / 2) and p[1] < 1e-8 and p[2] == 0.0
    p = dc2.speczlike_probability([18.0] * 3, [0.2, c["z0"], c["z0"] + c["tau"]])
    assert p[0] == pytest.approx(p[1]) and p[2] == pytest.approx(p[1] / np.e)


def test_speczlike_on_the_dc2_training_file(dc2, training):
    i, z = training["mag_i_lsst"], training["redshift"]
    lab = dc2.speczlike_labels(i, z)
    assert len(lab) == 10225 and 0.05 <= lab.mean() <= 0.15
    assert np.median(i[lab]) < np.median(i) and np.sum(lab & (i > dc2.BIASED_I_CUT)) > 0.3 * lab.sum()
    assert np.mean(z[lab] > 1.5) < 0.02
    frac = [lab[(i >= lo) & (i < hi)].mean() for lo, hi in [(16, 22), (22, 23), (23, 24), (24, 26)]]
    assert np.all(np.diff(frac) < 0), frac
    frac = [lab[(z >= lo) & (z < hi)].mean() for lo, hi in [(0, 0.5), (0.5, 1), (1, 1.5), (1.5, 3)]]
    assert np.all(np.diff(frac) < 0), frac


def test_nounl_ablation_data(dc2):
    for base in dc2.SEMI_SUPERVISED:
        d, a = dc2.scenario_data(base), dc2.scenario_data(base + dc2.NOUNL)
        assert d["unlabelled"] is not None and a["unlabelled"] is None
        assert set(a["labelled"]) == set(d["labelled"])
        for k, v in d["labelled"].items():
            assert np.array_equal(a["labelled"][k], v), (base, k)
        assert np.array_equal(a["ztrue"], d["ztrue"])
    assert len(dc2.scenario_data("speczlike")["labelled"]["redshift"]) == 1193
    with pytest.raises(ValueError, match="unknown scenario"):
        dc2.scenario_data("full" + dc2.NOUNL)


def test_scenario_names(dc2):
    ap = dc2.scenario_parser(dc2.__doc__)
    assert dc2.parse_scenarios(ap, ["speczlike,biased-nounl", "scarce-nounl"]) == \
        ["speczlike", "biased-nounl", "scarce-nounl"]
    assert set(dc2.default_scenarios()) == set(dc2.SCENARIOS)
    assert not set(dc2.default_scenarios(ablations=False)) & set(dc2.ABLATIONS)
    assert "speczlike" in dc2.default_scenarios(ablations=False)
    with pytest.raises(SystemExit):
        dc2.parse_scenarios(ap, ["full-nounl"])


def test_update_merge(dc2, tmp_path):
    old = {"sdss": {"x": 1, "run_date": "d0"}, "full": {"x": 2, "run_date": "d0"}, "mine": {"x": 3}}
    new = {"speczlike": {"x": 4, "run_date": "d1"}, "full": {"x": 5, "run_date": "d1"}}
    m = dc2.merge_scenarios(old, new)
    assert list(m) == ["full", "speczlike", "sdss", "mine"]
    assert m["full"] == {"x": 5, "run_date": "d1"} and m["sdss"] == old["sdss"] and m["mine"] == {"x": 3}
    deep = dc2.merge_scenarios({"full": {"A": 1, "B": 2}}, {"full": {"B": 3}}, combine=lambda a, b: {**a, **b})
    assert deep == {"full": {"A": 1, "B": 3}}

    # an old dc2.json without run dates: its scenarios get the date of its run
    path = tmp_path / "dc2.json"
    path.write_text(json.dumps({"meta": {"date": "2026-01-01"}, "scenarios": {"full": {"x": 2}}}))
    old = dc2.load_results(str(path))
    assert old["scenarios"]["full"]["run_date"] == "2026-01-01" and old["runs"] == [{"date": "2026-01-01"}]
    res = dc2.merge_scenarios(old["scenarios"], {"speczlike": {"error": "boom", "run_date": "2026-02-02"}})
    meta = {"date": "2026-02-02", "host": "h", "device": "cpu", "epochs": 2, "seed": 0, "n_b": 4}
    md = tmp_path / "dc2.md"
    dc2.write_markdown(str(md), meta, res, old["runs"] + [meta])
    rows = {line.split("|")[1].strip(): line for line in md.read_text().splitlines() if line.startswith("| ")}
    assert "| full | speczlike |" in rows["metric"]
    assert "2026-01-01" in rows["run date"] and "2026-02-02" in rows["run date"]
    assert "updated on 2026-02-02" in md.read_text() and "sigmoid((22.5 - i) / 0.4)" in md.read_text()
