"""benchmarks/dc2.py without training: the ``speczlike`` draw, the ``-nounl`` ablations, ``--decoders``
and the ``<scenario>/<decoder>`` result keys, ``--update``'s merge, the Markdown tables."""

import importlib.util
import json
import os
import re

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


def test_decoder_names(dc2):
    from photovaez.config import DECODERS

    ap = dc2.build_parser()
    assert dc2.DECODERS == list(DECODERS) == ["mlp", "sed"]
    args = ap.parse_args(["--scenarios", "full,biased", "--decoders", "sed,mlp", "sed"])
    assert dc2.parse_scenarios(ap, args.scenarios) == ["full", "biased"]
    assert dc2.parse_decoders(ap, args.decoders) == ["sed", "mlp"]  # comma lists, repeats dropped
    assert dc2.parse_decoders(ap, ap.parse_args([]).decoders) == ["mlp", "sed"]  # default: both
    assert dc2.parse_decoders(ap, ["sed"]) == ["sed"]
    for bad in (["mlp,gp"], ["MLP"], [","]):
        with pytest.raises(SystemExit):
            dc2.parse_decoders(ap, bad)
    with pytest.raises(SystemExit):  # the worker's --decoder is not the driver's option
        dc2.main(["--decoder", "sed", "--scenarios", "full"])
    with pytest.raises(SystemExit):  # a worker needs one
        dc2.main(["--worker", "full", "--result", "/nonexistent/r.json"])
    # result keys, and the file's order: decoder-major over every scenario
    assert dc2.result_key("biased-nounl", "sed") == "biased-nounl/sed"
    assert dc2.split_key("biased-nounl/sed") == ("biased-nounl", "sed") and dc2.split_key("full") == ("full", "")
    assert dc2.RESULT_ORDER[:2] == ["full/mlp", "scarce/mlp"] and dc2.RESULT_ORDER[-1] == "sdss/sed"
    assert len(dc2.RESULT_ORDER) == len(set(dc2.RESULT_ORDER)) == 2 * len(dc2.SCENARIOS)


def test_driver_runs_every_scenario_with_every_decoder(dc2, tmp_path, monkeypatch):
    """main() with the worker subprocess replaced: one worker per (scenario, decoder) with
    ``--decoder``, results under ``<scenario>/<decoder>``, ``--update`` keeping the other keys."""
    import rail.photovaez.compare as compare

    calls, failing = [], {("biased", "sed")}

    def fake_worker(cmd, rfile, timeout, *, name, identity=None, cwd=None):
        scenario, decoder = cmd[cmd.index("--worker") + 1], cmd[cmd.index("--decoder") + 1]
        calls.append((name, scenario, decoder))
        if (scenario, decoder) in failing:
            return {**identity, "error": "boom"}, 0.5
        return {"scenario": scenario, "decoder": decoder, "sigma_nmad": 0.01 * (1 + len(calls))}, 1.0

    monkeypatch.setattr(compare, "run_worker", fake_worker)
    out = tmp_path / "out"
    rc = dc2.main(["--scenarios", "full,biased", "--no-figures", "--epochs", "1", "--out", str(out)])
    assert rc == 1  # biased/sed failed
    assert calls == [("full/mlp", "full", "mlp"), ("biased/mlp", "biased", "mlp"),
                     ("full/sed", "full", "sed"), ("biased/sed", "biased", "sed")]
    data = json.loads((out / "dc2.json").read_text())
    assert list(data["scenarios"]) == ["full/mlp", "biased/mlp", "full/sed", "biased/sed"]
    assert data["scenarios"]["biased/sed"]["error"] == "boom"
    assert data["scenarios"]["biased/sed"]["decoder"] == "sed" and data["meta"]["decoders"] == ["mlp", "sed"]
    assert data["scenarios"]["full/sed"]["sigma_nmad"] == pytest.approx(0.04)  # the third worker

    calls.clear()
    failing.clear()
    assert dc2.main(["--update", "--scenarios", "biased", "speczlike", "--decoders", "sed", "--no-figures",
                     "--epochs", "1", "--out", str(out)]) == 0
    assert [c[0] for c in calls] == ["biased/sed", "speczlike/sed"]
    data = json.loads((out / "dc2.json").read_text())
    assert list(data["scenarios"]) == ["full/mlp", "biased/mlp", "full/sed", "biased/sed", "speczlike/sed"]
    assert "error" not in data["scenarios"]["biased/sed"] and len(data["runs"]) == 2
    assert data["scenarios"]["full/mlp"]["sigma_nmad"] == pytest.approx(0.02)  # kept from the first run
    md = (out / "dc2.md").read_text()
    assert "## decoder = mlp" in md and "## decoder = sed" in md and "decoders sed" in md


def test_update_merge(dc2, tmp_path):
    old = {"sdss/mlp": {"x": 1, "run_date": "d0"}, "full/mlp": {"x": 2, "run_date": "d0"}, "mine": {"x": 3}}
    new = {"speczlike/sed": {"x": 4, "run_date": "d1"}, "full/mlp": {"x": 5, "run_date": "d1"},
           "full/sed": {"x": 6, "run_date": "d1"}}
    m = dc2.merge_scenarios(old, new, order=dc2.RESULT_ORDER)
    assert list(m) == ["full/mlp", "sdss/mlp", "full/sed", "speczlike/sed", "mine"]
    assert m["full/mlp"] == {"x": 5, "run_date": "d1"} and m["sdss/mlp"] == old["sdss/mlp"]
    assert m["full/sed"] == new["full/sed"] and m["mine"] == {"x": 3}
    # compare.py's merge: plain scenario names by default, combined per scenario
    assert list(dc2.merge_scenarios({"sdss": 1}, {"full": 2})) == ["full", "sdss"]
    deep = dc2.merge_scenarios({"full": {"A": 1, "B": 2}}, {"full": {"B": 3}}, combine=lambda a, b: {**a, **b})
    assert deep == {"full": {"A": 1, "B": 3}}

    # an old dc2.json without run dates: its results get the date of its run
    path = tmp_path / "dc2.json"
    path.write_text(json.dumps({"meta": {"date": "2026-01-01"}, "scenarios": {"full/mlp": {"x": 2}}}))
    old = dc2.load_results(str(path))
    assert old["scenarios"]["full/mlp"]["run_date"] == "2026-01-01" and old["runs"] == [{"date": "2026-01-01"}]
    res = dc2.merge_scenarios(old["scenarios"], {"speczlike/mlp": {"error": "boom", "run_date": "2026-02-02"}},
                              order=dc2.RESULT_ORDER)
    meta = {"date": "2026-02-02", "host": "h", "device": "cpu", "epochs": 2, "seed": 0, "n_b": 4}
    md = tmp_path / "dc2.md"
    dc2.write_markdown(str(md), meta, res, old["runs"] + [meta])
    rows = {line.split("|")[1].strip(): line for line in md.read_text().splitlines() if line.startswith("| ")}
    assert "| full | speczlike |" in rows["metric"]
    assert "2026-01-01" in rows["run date"] and "2026-02-02" in rows["run date"]
    text = md.read_text()
    assert "updated on 2026-02-02" in text and "sigmoid((22.5 - i) / 0.4)" in text
    assert "- `speczlike/mlp`: boom" in text and "## decoder = sed" not in text
    assert "No scenario has results with both decoders (mlp, sed) yet." in text


def _fake(scenario, decoder, sigma_nmad, cat, ks, cde, **kw):
    return {"scenario": scenario, "decoder": decoder, "n_labelled": 500, "sigma_nmad": sigma_nmad,
            "catastrophic_fraction": cat, "pit_ks": ks, "cdeloss": cde, "run_date": "2026-03-03", **kw}


def _tables(text):
    """{heading: [header cells, row cells, ...]} of the Markdown tables under each ``## `` heading."""
    out, head = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:]
        elif line.startswith("| ") and head is not None:
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])  # escaped pipes stay in their cell
            out.setdefault(head, []).append([c.strip() for c in cells])
    return out


def test_markdown_per_decoder_and_comparison(dc2, tmp_path):
    fig = str(tmp_path / "figures" / "full_sed_dz.png")
    results = {
        "full/mlp": _fake("full", "mlp", 0.02061, 0.01893, 0.02782, -8.61357),
        "scarce/mlp": _fake("scarce", "mlp", 0.02684, 0.02801, 0.04302, -6.29314),
        "scarce-nounl/mlp": _fake("scarce-nounl", "mlp", 0.04101, 0.08631, 0.01873, -3.88234),
        "biased/mlp": _fake("biased", "mlp", 0.16240, 0.49470, 0.68680, 9.42910),
        "sdss/mlp": _fake("sdss", "mlp", 0.01190, 0.0, 0.03180, -21.46540),
        "full/sed": _fake("full", "sed", 0.01952, 0.01501, 0.03556, -8.90021, figures=[fig]),
        "scarce/sed": _fake("scarce", "sed", 0.02430, 0.02100, 0.03900, -7.10050),
        "scarce-nounl/sed": _fake("scarce-nounl", "sed", 0.02900, 0.03500, 0.02500, -6.00020),
        "biased/sed": {"scenario": "biased", "decoder": "sed", "error": "boom", "run_date": "2026-03-03"},
        "speczlike-nounl/sed": _fake("speczlike-nounl", "sed", 0.03450, 0.11300, 0.12070, -4.27800),
    }
    md = tmp_path / "dc2.md"
    meta = {"date": "2026-03-03", "host": "h", "device": "cpu", "epochs": 2, "seed": 0, "n_b": 4,
            "decoders": ["mlp", "sed"]}
    dc2.write_markdown(str(md), meta, results)
    text = md.read_text()
    assert text.index("## decoder = mlp") < text.index("## decoder = sed") < text.index("## mlp vs sed")
    assert "`sed`, rest-frame SED templates" in text and "decoders mlp, sed" in text
    tables = _tables(text)
    # one table per decoder, the columns that decoder's scenarios, the rows TABLE_ROWS
    for d, names in (("mlp", ["full", "scarce", "scarce-nounl", "biased", "sdss"]),
                     ("sed", ["full", "scarce", "scarce-nounl", "biased", "speczlike-nounl"])):
        t = tables[f"decoder = {d}"]
        assert t[0] == ["metric", *names]
        assert [r[0] for r in t[1:]] == [label for _, label, _ in dc2.TABLE_ROWS]
        want = []
        for s in names:
            r = results[dc2.result_key(s, d)]
            want.append("" if "error" in r else "{:.4f}".format(r["sigma_nmad"]))
        assert next(r for r in t if r[0] == "sigma_NMAD (zmode)")[1:] == want
    assert tables["decoder = sed"][1][4] == "failed"  # biased/sed, labelled-galaxies row

    # mlp vs sed: the scenarios both ran (not biased: sed failed; not sdss / speczlike-nounl: one decoder)
    cmp_ = tables["mlp vs sed"]
    assert len(cmp_[0]) == 9 and cmp_[0][0] == "scenario"
    assert cmp_[0][1:] == ["sigma_NMAD (zmode), mlp", "sigma_NMAD (zmode), sed", "\\|ez\\| > 0.15 (zmode), mlp",
                           "\\|ez\\| > 0.15 (zmode), sed", "PIT KS, mlp", "PIT KS, sed", "CDE loss, mlp",
                           "CDE loss, sed"]
    assert [r[0] for r in cmp_[1:]] == ["full", "scarce", "scarce-nounl"]
    assert cmp_[1][1:] == ["0.0206", "0.0195", "0.0189", "0.0150", "0.0278", "0.0356", "-8.6136", "-8.9002"]
    for row in cmp_[1:]:
        m, s = results[f"{row[0]}/mlp"], results[f"{row[0]}/sed"]
        want = [m["sigma_nmad"], s["sigma_nmad"], m["catastrophic_fraction"], s["catastrophic_fraction"],
                m["pit_ks"], s["pit_ks"], m["cdeloss"], s["cdeloss"]]
        np.testing.assert_allclose([float(c) for c in row[1:]], want, atol=5e-5)

    # what the unlabelled photometry buys: <s> vs <s>-nounl with the same decoder, when both are there
    buys = [line for line in text.splitlines() if line.startswith("- `") and " vs `" in line]
    assert buys == [
        "- `scarce` vs `scarce-nounl`, mlp: sigma_NMAD (zmode) 0.0268 vs 0.0410 (-0.0142); "
        "CDE loss -6.2931 vs -3.8823 (-2.4108)",
        "- `scarce` vs `scarce-nounl`, sed: sigma_NMAD (zmode) 0.0243 vs 0.0290 (-0.0047); "
        "CDE loss -7.1005 vs -6.0002 (-1.1003)",
    ]
    # failures and figures, grouped by decoder
    assert "## Failed runs\n\n- `biased/sed`: boom" in text
    figs = text[text.index("## Figures"):]
    assert "### decoder = sed" in figs and "### decoder = mlp" not in figs
    assert "- full: [full_sed_dz.png](figures/full_sed_dz.png)" in figs
