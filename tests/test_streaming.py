"""Training from files read chunk by chunk (photovaez.streaming, api.fit_streaming, the informer's
streaming path): readers against the tables written, the scan's scaler and counts against the
in-memory computations, every training row visited once per epoch (one process and a shard per
process), both files interleaved in proportion, reads bounded by the chunk size, bad input."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tables_io

from photovaez.config import ModelConfig, TrainConfig
from photovaez.features import FeatureSpec, Photometry, clean_photometry, fit_scaler
from photovaez.loss import alpha_weight
from photovaez.streaming import TrainingStream, open_table

SPEC = FeatureSpec()
MC = ModelConfig(dim_x=SPEC.dim, n_bands=6, dim_a=3, dim_b=3, hidden=[16], decoder="mlp")
TINY_TRAIN = dict(epochs=2, batch_size=64, progress=False, proposal_steps=0, calibrate_posterior=False, device="cpu",
                  min_epochs=1, stream_chunk_size=64)


@pytest.fixture(scope="module")
def files(dc2_tables, tmp_path_factory):
    """A labelled hdf5 file (group photometry; 20 planted unusable redshifts) and an unlabelled
    parquet file (row groups of 50), and their tables."""
    d = tmp_path_factory.mktemp("stream")
    t = dc2_tables[0]
    lab = {k: np.asarray(v[:260]).copy() for k, v in t.items()}
    lab["redshift"][::13] = np.nan  # 20 rows: used as unlabelled galaxies
    unl = {k: np.asarray(v[260:600]) for k, v in t.items() if k != "redshift"}
    lab_path, unl_path = str(d / "lab.hdf5"), str(d / "unl.parquet")
    tables_io.write({"photometry": lab}, lab_path)
    pq.write_table(pa.table(unl), unl_path, row_group_size=50)
    return lab_path, unl_path, lab, unl


def _open(files, **kw):
    args = dict(group="photometry", chunk_size=37, buffer_chunks=2, validation_fraction=0.1, max_validation=1000,
                sample_size=100, seed=3)
    args.update(kw)
    return TrainingStream.open(files[0], files[1], SPEC, MC, "redshift", **args)


def _sorted_rows(values: np.ndarray) -> np.ndarray:
    return values[np.lexsort(values.T[::-1])]


def test_readers_read_row_ranges(files, tmp_path):
    lab_path, unl_path, lab, unl = files
    flat = str(tmp_path / "flat.hdf5")
    tables_io.write(unl, flat)
    for path, group, table in ((lab_path, "photometry", lab), (unl_path, "", unl), (flat, "photometry", unl)):
        with open_table(path, group) as r:
            assert r.n_rows == len(next(iter(table.values())))
            assert set(table) <= set(r.columns)
            for start, stop in ((0, 7), (45, 160), (r.n_rows - 3, r.n_rows)):
                got = r.read(start, stop, ["mag_i_lsst", "mag_err_g_lsst"])
                for c in got:
                    np.testing.assert_array_equal(got[c], table[c][start:stop])


def test_bad_input_is_named(files, tmp_path):
    lab_path, unl_path, lab, _ = files
    txt = tmp_path / "table.txt"
    txt.write_text("not a table")
    with pytest.raises(ValueError, match="neither hdf5 nor parquet"):
        open_table(str(txt))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_table(str(tmp_path / "missing.hdf5"))
    grouped = str(tmp_path / "other_group.hdf5")
    tables_io.write({"other": lab}, grouped)
    with pytest.raises(KeyError, match="hdf5 group 'photometry' \\(hdf5_groupname\\)"):
        open_table(grouped, "photometry")
    no_z = str(tmp_path / "no_z.hdf5")
    tables_io.write({k: v for k, v in lab.items() if k != "redshift"}, no_z)
    with pytest.raises(KeyError, match="'redshift' \\(redshift_col\\)"):
        TrainingStream.open(no_z, None, SPEC, MC, "redshift", chunk_size=10)
    no_band = str(tmp_path / "no_band.parquet")
    pq.write_table(pa.table({k: v for k, v in lab.items() if k != "mag_err_r_lsst"}), no_band)
    with pytest.raises(KeyError, match="'mag_err_r_lsst' \\(error of mag_r_lsst\\) is missing from"):
        TrainingStream.open(lab_path, no_band, SPEC, MC, "redshift", group="photometry", chunk_size=10)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="stream_chunk_size must be > 0"):
            TrainingStream.open(lab_path, None, SPEC, MC, "redshift", group="photometry", chunk_size=bad)
    with pytest.raises(ValueError, match="stream_chunk_size must be >= 0"):
        TrainConfig(stream_chunk_size=-1)


def test_scan_gives_the_in_memory_scaler_counts_and_alpha(files):
    _, _, lab, unl = files
    s = _open(files)
    try:
        phot = Photometry.concatenate([clean_photometry(lab, SPEC), clean_photometry(unl, SPEC)])
        ref = fit_scaler(phot, SPEC)  # the scaler of every row of both tables, in memory
        np.testing.assert_allclose(s.scaler.mean, ref.mean, rtol=1e-12)
        np.testing.assert_allclose(s.scaler.std, ref.std, rtol=1e-10)
        n_val = len(s.validation)
        assert n_val == round(0.1 * 260) + round(0.1 * 340)
        z = lab["redshift"]
        usable = np.isfinite(z) & (z > 0)
        assert usable.sum() == 240
        # which rows of the labelled table were held out, found by their photometry
        lab_values = clean_photometry(lab, SPEC).values
        held_rows = (lab_values[:, None, :] == s.validation.values[None, :, :]).all(-1).any(1)
        assert held_rows.sum() == round(0.1 * 260)
        assert s.n_labelled == int((usable & ~held_rows).sum())
        assert s.n_unlabelled == int((~usable & ~held_rows).sum()) + 340 - round(0.1 * 340)
        held = s.validation.z[s.validation.labelled]
        np.testing.assert_array_equal(np.sort(held), np.sort(z[usable & held_rows]))
        assert alpha_weight(s.n_labelled, s.n_unlabelled) == pytest.approx((600 - n_val) / s.n_labelled)
        logz = np.log(np.setdiff1d(z[usable], held))
        assert s.logz_mean == pytest.approx(logz.mean(), rel=1e-9)
    finally:
        s.close()


def test_epoch_visits_every_training_row_once_in_one_or_two_shards(files):
    s = _open(files)
    try:
        everything = np.concatenate([clean_photometry(files[2], SPEC).values, clean_photometry(files[3], SPEC).values])
        val = s.validation.values
        keep = ~(everything[:, None, :] == val[None, :, :]).all(-1).any(1)
        reference = _sorted_rows(everything[keep])
        assert len(reference) == len(s)
        steps = s.steps_per_epoch(50)
        assert steps == math.ceil(len(s) / 50)
        for world in (1, 2):
            seen, labelled, n_parts = [], 0, []
            for rank in range(world):
                parts = list(s.epoch_parts(epoch=1, batch_size=50, rank=rank, world_size=world))
                n_parts.append(len(parts))
                for p in parts:
                    assert 0 <= p.offset and p.offset + len(p.rows) <= p.n_global
                    seen.append(p.rows.values)
                    labelled += int(p.rows.labelled.sum())
            assert n_parts == [steps] * world  # every process steps together
            np.testing.assert_array_equal(_sorted_rows(np.concatenate(seen)), reference)
            assert labelled == s.n_labelled
        # another epoch visits the rows in another order
        a = next(s.epoch_parts(1, 50)).rows.values
        b = next(s.epoch_parts(2, 50)).rows.values
        assert not np.array_equal(a, b)
    finally:
        s.close()


def test_batches_interleave_both_files_in_proportion(files):
    """Each file on its own would give batches of one kind only; in proportion, the labelled
    share of each batch stays near N_s / N and labelled rows are spread over the whole epoch."""
    s = _open(files, chunk_size=30, buffer_chunks=3)
    try:
        share = s.n_labelled / len(s)
        fractions, positions_lab, positions_unl = [], [], []
        for k, p in enumerate(s.epoch_parts(0, 40)):
            fractions.append(p.rows.labelled.mean())
            positions_lab += [k] * int(p.rows.labelled.sum())
            positions_unl += [k] * int((~p.rows.labelled).sum())
        assert max(abs(f - share) for f in fractions) < 0.3
        assert abs(np.mean(positions_lab) - np.mean(positions_unl)) < 0.15 * len(fractions)
    finally:
        s.close()


def test_reads_are_bounded_by_the_chunk_size(files, monkeypatch):
    from photovaez import streaming

    sizes = []
    for cls in (streaming.HDF5Reader, streaming.ParquetReader):
        real = cls.read

        def read(self, start, stop, columns, _real=real):
            sizes.append(stop - start)
            return _real(self, start, stop, columns)

        monkeypatch.setattr(cls, "read", read)
    s = _open(files, chunk_size=40)
    try:
        for _ in s.epoch_parts(0, 64):
            pass
    finally:
        s.close()
    assert sizes and max(sizes) <= 40


def test_fit_streaming_trains_with_the_stream_counts(files):
    from photovaez.api import estimate, fit_streaming, load_predictor

    d = fit_streaming(files[0], files[1], model_config=dict(hidden=[16], dim_a=3, dim_b=3, decoder="mlp"),
                      train_config=TINY_TRAIN, group="photometry")
    rep = d["report"]
    assert rep["n_labelled"] + rep["n_unlabelled"] + rep["n_validation"] == 600
    assert rep["alpha"] == pytest.approx((rep["n_labelled"] + rep["n_unlabelled"]) / rep["n_labelled"])
    assert rep["n_steps"] == 2 * math.ceil((rep["n_labelled"] + rep["n_unlabelled"]) / 64)
    assert "labelled_support" in d and "calibration" in d
    pdfs, _ = estimate(load_predictor(d), files[3], np.linspace(0, 3, 61))
    assert pdfs.shape == (340, 61) and np.all(np.isfinite(pdfs))


def test_informer_streams_file_inputs(files):
    from rail.estimation.algos.photovaez import PhotoVAEzInformer

    opts = dict(hidden=[16], dim_a=3, dim_b=3, decoder="mlp", hdf5_groupname="photometry", **TINY_TRAIN)
    stage = PhotoVAEzInformer.make_stage(name="inf_stream", output_mode="return", **opts)
    rep = stage.inform(files[0], unlabeled_data=files[1]).data["report"]
    assert rep["stream"]["chunk_size"] == 64
    assert rep["n_labelled"] + rep["n_unlabelled"] + rep["n_validation"] == 600
    bad = PhotoVAEzInformer.make_stage(name="inf_stream_bad", output_mode="return", **{**opts, "redshift_col": "zz"})
    with pytest.raises(KeyError, match="PhotoVAEzInformer: column 'zz' \\(redshift_col\\)"):
        bad.inform(files[0], unlabeled_data=files[1])
