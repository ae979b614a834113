"""Training from tables larger than memory: chunked readers of hdf5 / parquet files and a batch
source that streams them.

A :class:`TrainingStream` stands for the labelled file (rows with a finite redshift > 0 in
``redshift_col``; other rows count as unlabelled, as in :func:`photovaez.api.fit`) and an optional
unlabelled file.  Opening it makes one pass over both files, chunk by chunk
(:meth:`TrainingStream.open`), that gathers everything training needs besides the batches, in
memory bounded by the chunk size and a few fixed-size samples:

* the feature standardisation (:class:`photovaez.features.Scaler`) from streamed moments of the
  raw features over every row (what :func:`photovaez.features.fit_scaler` computes on the whole
  table, to rounding);
* the held-out validation rows: ``validation_fraction`` of each file's rows, at most
  ``stream_max_validation`` per file, chosen by row index with ``default_rng(seed)``;
* the training counts N_s (labelled) and N_p (unlabelled), hence alpha = (N_s + N_p) / N_s;
  a file's row count comes from its metadata; the labelled count needs the redshift column;
* the mean and spread of the labels' log z, and seeded uniform samples of at most
  ``stream_sample_size`` labelled rows and of the union of both files' training rows, for the
  steps that need rows in memory (the bpz prior's start, the labelled support, the importance
  proposal).

Each epoch (:meth:`TrainingStream.epoch_parts`) the chunks of each file are visited in a seeded
random order (one order per epoch, the same on every process); with several processes, process r
reads the chunks at positions r, r + W, ... of each file's order (its shard).  A process interleaves
its two files in proportion to their remaining rows (the labelled share of each block of
``chunk_size`` rows is a hypergeometric draw), rows permuted within each chunk, and passes the
blocks through a shuffle buffer of ``buffer_chunks`` blocks, permuted before each block leaves.
So each row is equally likely to be in any batch, and a batch is a uniform draw from the union of
both sets up to the buffer's mixing: the batch mean of the per-galaxy loss stays an unbiased
estimate of J / (N_s + N_p) with the alpha of the training counts.  A file sorted by redshift
(such as RAIL's DC2 files) mixes only within the buffer: use a smaller ``chunk_size`` and more
``buffer_chunks`` for it (memory is about (buffer_chunks + 2) x chunk_size rows), or shuffle it
once on disk.

Files: hdf5 (h5py; the table is the group ``group`` -- RAIL's ``hdf5_groupname`` -- or the top
level when the file has no such group but has columns there) and parquet (pyarrow; memory is
bounded by the row-group size, so write large files with row groups of about the chunk size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .config import ModelConfig
from .features import FeatureSpec, Photometry, Scaler, clean_photometry, feature_matrix
from .observations import decoder_columns

__all__ = ["TableReader", "HDF5Reader", "ParquetReader", "open_table", "RowBlock", "BatchPart", "LabelSummary",
           "TrainingStream", "chunk_ranges"]

log = logging.getLogger(__name__)

HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf", ".he5")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


# ------------------------------------------------------------------------------------------------
# readers


class TableReader:
    """A table in a file whose row ranges can be read without loading the file.

    Attributes
    ----------
    path
        The file.
    n_rows
        Its number of rows (from the file's metadata).
    columns
        Its column names.
    """

    path: str
    n_rows: int
    columns: list[str]

    def read(self, start: int, stop: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of ``columns`` as a dict of numpy arrays."""
        raise NotImplementedError

    def require(self, columns: Sequence[str], what: str) -> None:
        """Raise a ``KeyError`` naming the first of ``columns`` the file lacks (``what`` says which option)."""
        have = set(self.columns)
        for c in columns:
            if c not in have:
                shown = self.columns if len(self.columns) <= 30 else self.columns[:30] + ["..."]
                raise KeyError(f"column {c!r} ({what}) is missing from {self.path!r}; its columns are {shown}")

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HDF5Reader(TableReader):
    """A table of 1-d datasets in an hdf5 file (h5py): the group ``group``, or the top level.

    Parameters
    ----------
    path
        The file.
    group
        The group holding the columns (RAIL's ``hdf5_groupname``); ``""`` = the top level.  A file
        without that group but with columns at its top level (as ``tables_io`` writes a flat
        table) is read from the top level.
    """

    def __init__(self, path: str, group: str = ""):
        import h5py

        self.path = path
        self._file = h5py.File(path, "r")
        node: Any = self._file
        if group and group in self._file:
            node = self._file[group]
            if not isinstance(node, h5py.Group):
                self._file.close()
                raise ValueError(f"{path!r}: {group!r} (hdf5_groupname) is a dataset, not a group of columns")
        cols = {k: v for k, v in node.items() if isinstance(v, h5py.Dataset) and v.ndim == 1}
        if not cols:
            keys = sorted(self._file.keys())
            self._file.close()
            if group and node is self._file:
                raise KeyError(f"hdf5 group {group!r} (hdf5_groupname) is not in {path!r}, and its top level has no "
                               f"columns; its top-level keys are {keys}")
            where = f"group {group!r} (hdf5_groupname)" if node is not self._file else "top level"
            raise ValueError(f"{path!r}: its {where} holds no 1-d columns (its top-level keys are {keys}: set "
                             "hdf5_groupname to the group of the table; a pandas/PyTables table is not read, write "
                             "the columns as datasets, e.g. with tables_io)")
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            raise ValueError(f"{path!r}: its columns have different lengths {sorted(lengths)}")
        self._cols = cols
        self.columns = list(cols)
        self.n_rows = lengths.pop()

    def read(self, start: int, stop: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
        self.require(columns, "column")
        return {c: np.asarray(self._cols[c][start:stop]) for c in columns}

    def close(self) -> None:
        self._file.close()


class ParquetReader(TableReader):
    """A parquet file (pyarrow): row ranges are read from the row groups that hold them."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.path = path
        self._file = pq.ParquetFile(path)
        meta = self._file.metadata
        self.n_rows = int(meta.num_rows)
        self.columns = list(self._file.schema_arrow.names)
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.max_row_group = max(sizes) if sizes else 0

    def read(self, start: int, stop: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
        self.require(columns, "column")
        if stop <= start:
            return {c: np.zeros(0) for c in columns}
        first = int(np.searchsorted(self._bounds, start, side="right") - 1)
        last = int(np.searchsorted(self._bounds, stop, side="left"))
        tab = self._file.read_row_groups(list(range(first, last)), columns=list(columns))
        off = start - int(self._bounds[first])
        tab = tab.slice(off, stop - start)
        return {c: tab.column(c).to_numpy() for c in columns}

    def close(self) -> None:
        self._file.close()


def open_table(path: str | os.PathLike, group: str = "") -> TableReader:
    """A :class:`TableReader` of an hdf5 or parquet file (told apart by suffix, else by content).

    Raises
    ------
    FileNotFoundError
        There is no such file.
    ValueError
        It is neither hdf5 nor parquet.
    KeyError
        The hdf5 ``group`` is missing and the top level has no columns.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training file {path!r} does not exist")
    low = path.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return ParquetReader(path)
    if low.endswith(HDF5_SUFFIXES):
        return HDF5Reader(path, group)
    import h5py

    if h5py.is_hdf5(path):
        return HDF5Reader(path, group)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return ParquetReader(path)
    raise ValueError(f"training file {path!r} is neither hdf5 nor parquet (suffixes "
                     f"{HDF5_SUFFIXES + PARQUET_SUFFIXES})")


def chunk_ranges(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(0, c), (c, 2c), ...]`` covering ``n_rows`` rows in chunks of ``chunk_size``."""
    return [(s, min(s + chunk_size, n_rows)) for s in range(0, n_rows, chunk_size)]


# ------------------------------------------------------------------------------------------------
# rows in memory


class RowBlock(NamedTuple):
    """Cleaned training rows: raw values ``v`` and their errors (n, B+E), redshifts (n,; NaN where
    unlabelled), the labelled mask (n,) and the decoder's columns (n, k)."""

    values: np.ndarray
    errors: np.ndarray
    z: np.ndarray
    labelled: np.ndarray
    decoder_columns: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.z)

    def take(self, idx: Any) -> RowBlock:
        """The rows ``idx``."""
        return RowBlock(*(a[idx] for a in self))

    @staticmethod
    def concat(blocks: Sequence[RowBlock]) -> RowBlock:
        """The rows of ``blocks``, in order (at least one block)."""
        if len(blocks) == 1:
            return blocks[0]
        return RowBlock(*(np.concatenate(a) for a in zip(*blocks)))

    @staticmethod
    def of(phot: Photometry, z: np.ndarray, labelled: np.ndarray, spec: FeatureSpec, mc: ModelConfig) -> RowBlock:
        """The rows of cleaned photometry (errors of the extra columns are zero, as in training)."""
        errors = np.concatenate([phot.errs, np.zeros_like(phot.extras)], axis=1)
        return RowBlock(phot.values, errors, np.where(labelled, z, np.nan), np.asarray(labelled, bool),
                        decoder_columns(phot, spec, mc))


class BatchPart(NamedTuple):
    """This process's part of one global mini-batch.

    Attributes
    ----------
    rows
        Its rows.
    n_global
        Rows of the global batch (all processes together).
    offset
        Where its rows start in the global batch.
    """

    rows: RowBlock
    n_global: int
    offset: int


class LabelSummary(NamedTuple):
    """What the start of training needs from the labels: the mean and the spread (>= 0.05) of the
    training labels' log z, their redshifts and reference magnitudes (the last decoder column;
    all of them in memory, a bounded sample when streamed), and the number of training rows."""

    logz_mean: float
    logz_std: float
    z: np.ndarray
    m_ref: np.ndarray
    n_train: int


class _Moments:
    """Streamed count, mean and sum of squared deviations per column (Chan et al.'s merge)."""

    def __init__(self, dim: int):
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        nb, mb = len(x), x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


class _BottomK:
    """A seeded uniform sample of at most ``k`` rows of a stream: the rows with the smallest of
    independent uniform keys, kept chunk by chunk."""

    def __init__(self, k: int, rng: np.random.Generator):
        self.k, self.rng = int(k), rng
        self.keys = np.zeros(0)
        self.parts: list[tuple[Photometry, RowBlock]] = []

    def add(self, phot: Photometry, rows: RowBlock) -> None:
        keys = self.rng.random(len(rows))
        if self.k <= 0 or len(rows) == 0:
            return
        self.parts.append((phot, rows))
        self.keys = np.concatenate([self.keys, keys])
        if len(self.keys) > 2 * self.k:
            self._shrink()

    def _shrink(self) -> None:
        phot = Photometry.concatenate([p for p, _ in self.parts])
        rows = RowBlock.concat([r for _, r in self.parts])
        if len(self.keys) > self.k:
            keep = np.sort(np.argpartition(self.keys, self.k - 1)[: self.k])
            phot, rows, self.keys = phot.subset(keep), rows.take(keep), self.keys[keep]
        self.parts = [(phot, rows)]

    def result(self) -> tuple[Photometry, RowBlock] | None:
        if not self.parts:
            return None
        self._shrink()
        return self.parts[0]


# ------------------------------------------------------------------------------------------------
# the stream


@dataclass
class _File:
    reader: TableReader
    labelled_file: bool
    chunks: list[tuple[int, int]]
    validation_rows: np.ndarray  # sorted row indices held out
    train_rows_per_chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class TrainingStream:
    """Labelled (and unlabelled) training files read chunk by chunk; see the module docstring.

    Build one with :meth:`open`.  Its attributes after that pass:

    Attributes
    ----------
    scaler
        The feature standardisation of every row of both files.
    validation
        The held-out rows (bounded), and ``validation_phot`` their cleaned photometry.
    n_labelled, n_unlabelled
        Training rows (validation rows excluded) with and without a usable redshift.
    labelled_sample, union_sample
        Seeded uniform samples (cleaned photometry, rows) of the labelled training rows and of all
        training rows, at most ``sample_size`` each.
    """

    spec: FeatureSpec
    model_config: ModelConfig
    redshift_col: str
    chunk_size: int
    buffer_chunks: int
    seed: int
    files: list[_File]
    scaler: Scaler
    validation: RowBlock
    validation_phot: Photometry
    n_labelled: int
    n_unlabelled: int
    logz_mean: float
    logz_std: float
    labelled_sample: tuple[Photometry, RowBlock]
    union_sample: tuple[Photometry, RowBlock]
    fingerprint: str

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def open(cls, labelled_path: str | os.PathLike, unlabelled_path: str | os.PathLike | None, spec: FeatureSpec,
             model_config: ModelConfig, redshift_col: str = "redshift", group: str = "", chunk_size: int = 65536,
             buffer_chunks: int = 4, validation_fraction: float = 0.1, max_validation: int = 10000,
             sample_size: int = 50000, seed: int = 0) -> TrainingStream:
        """Open the files and make the pass over them described in the module docstring.

        Parameters
        ----------
        labelled_path
            hdf5 / parquet file with the feature columns and ``redshift_col``.
        unlabelled_path
            Optional file with the feature columns (any redshift column is ignored).
        spec, model_config
            The features and the network settings (for the decoder's columns).
        redshift_col
            The labelled file's redshift column.
        group
            The hdf5 group of the tables (RAIL's ``hdf5_groupname``; ``""`` = the top level).
        chunk_size
            Rows per read (``stream_chunk_size``), > 0.
        buffer_chunks
            Chunks in the shuffle buffer (``stream_buffer_chunks``), >= 1.
        validation_fraction, max_validation
            Fraction of each file's rows held out, at most ``max_validation`` rows per file.
        sample_size
            Rows of each in-memory sample (``stream_sample_size``).
        seed
            Fixes the validation rows, the samples and every epoch's order.
        """
        if int(chunk_size) <= 0:
            raise ValueError(f"stream_chunk_size must be > 0 to stream the training files, got {chunk_size}")
        if int(buffer_chunks) < 1:
            raise ValueError(f"stream_buffer_chunks must be >= 1, got {buffer_chunks}")
        if int(max_validation) < 0 or int(sample_size) < 0:
            raise ValueError("stream_max_validation and stream_sample_size must be >= 0")
        readers: list[TableReader] = []
        try:
            readers.append(open_table(labelled_path, group))
            readers[0].require([redshift_col], "redshift_col")
            if unlabelled_path is not None:
                readers.append(open_table(unlabelled_path, group))
            for r in readers:
                for name, what in zip(spec.columns, _column_roles(spec)):
                    r.require([name], what)
            return cls._scan(readers, spec, model_config, redshift_col, int(chunk_size), int(buffer_chunks),
                             validation_fraction, int(max_validation), int(sample_size), int(seed), group)
        except BaseException:
            for r in readers:
                r.close()
            raise

    @classmethod
    def _scan(cls, readers: list[TableReader], spec: FeatureSpec, mc: ModelConfig, redshift_col: str,
              chunk_size: int, buffer_chunks: int, validation_fraction: float, max_validation: int,
              sample_size: int, seed: int, group: str) -> TrainingStream:
        rng = np.random.default_rng([seed, 0x5eed])
        files = []
        for i, r in enumerate(readers):
            n_val = min(int(round(validation_fraction * r.n_rows)), max_validation)
            if i == 0:
                n_val = min(n_val, max(r.n_rows - 1, 0))
            val = np.sort(rng.choice(r.n_rows, n_val, replace=False)) if n_val else np.zeros(0, np.int64)
            files.append(_File(r, i == 0, chunk_ranges(r.n_rows, chunk_size), val.astype(np.int64)))
        amat = feature_matrix(spec)
        moments, logz = _Moments(amat.shape[1]), _Moments(1)
        lab_sample, union_sample = _BottomK(sample_size, rng), _BottomK(sample_size, rng)
        val_parts: list[tuple[Photometry, RowBlock]] = []
        n_lab = n_unl = 0
        for f in files:
            per_chunk = []
            for start, stop in f.chunks:
                phot, rows = _read_rows(f, start, stop, spec, mc, redshift_col)
                moments.add(phot.values @ amat)
                is_val = _validation_mask(f, start, stop)
                if is_val.any():
                    val_parts.append((phot.subset(is_val), rows.take(is_val)))
                train = ~is_val
                per_chunk.append(int(train.sum()))
                tphot, trows = phot.subset(train), rows.take(train)
                lab = trows.labelled
                n_lab += int(lab.sum())
                n_unl += int((~lab).sum())
                logz.add(np.log(trows.z[lab])[:, None])
                lab_sample.add(tphot.subset(lab), trows.take(lab))
                union_sample.add(tphot, trows)
            f.train_rows_per_chunk = np.asarray(per_chunk, np.int64)
        if n_lab == 0:
            raise ValueError(f"no labelled galaxies: column {redshift_col!r} (redshift_col) of "
                             f"{readers[0].path!r} has no finite value > 0 among the training rows")
        std = moments.std
        scaler = Scaler(moments.mean.copy(), np.where(std > 1e-12, std, 1.0))
        if val_parts:
            vphot = Photometry.concatenate([p for p, _ in val_parts])
            vrows = RowBlock.concat([r for _, r in val_parts])
        else:
            vphot = _empty_phot(spec)
            vrows = RowBlock.of(vphot, np.zeros(0), np.zeros(0, bool), spec, mc)
        ls, us = lab_sample.result(), union_sample.result()
        stream = cls(spec, mc, redshift_col, chunk_size, buffer_chunks, seed, files, scaler, vrows, vphot, n_lab,
                     n_unl, float(logz.mean[0]), float(max(logz.std[0], 0.05)), ls,
                     us if us is not None else ls, _fingerprint(readers, group, redshift_col, chunk_size,
                                                                buffer_chunks, validation_fraction, max_validation,
                                                                sample_size, seed))
        log.info("streaming %s: %d labelled and %d unlabelled training rows, %d held out, chunks of %d rows, shuffle "
                 "buffer of %d chunks", " + ".join(r.path for r in readers), n_lab, n_unl, len(vrows), chunk_size,
                 buffer_chunks)
        return stream

    def close(self) -> None:
        """Close the files."""
        for f in self.files:
            f.reader.close()

    # -- what training reads -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_labelled + self.n_unlabelled

    def label_summary(self) -> LabelSummary:
        """The :class:`LabelSummary` of the training labels (sampled redshifts and reference magnitudes)."""
        rows = self.labelled_sample[1]
        m_ref = rows.decoder_columns[:, -1] if rows.decoder_columns.shape[1] else np.zeros(len(rows))
        return LabelSummary(self.logz_mean, self.logz_std, rows.z, m_ref, len(self))

    def shard_sizes(self, epoch: int, world_size: int) -> np.ndarray:
        """Training rows of each process's shard in ``epoch`` (W,)."""
        sizes = np.zeros(world_size, np.int64)
        for i, f in enumerate(self.files):
            order = self._chunk_order(epoch, i)
            for r in range(world_size):
                sizes[r] += int(f.train_rows_per_chunk[order[r::world_size]].sum())
        return sizes

    def steps_per_epoch(self, batch_size: int) -> int:
        """Global mini-batches per epoch: ``ceil(N_train / batch_size)``."""
        return max(1, math.ceil(len(self) / batch_size))

    def epoch_parts(self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[BatchPart]:
        """This process's parts of the global mini-batches of ``epoch``.

        There are :meth:`steps_per_epoch` global batches; process r contributes
        ``n_r // S`` or ``n_r // S + 1`` of its shard's n_r rows to each (its shard's share), so
        that every training row of every shard is used once per epoch and the global batch (the
        concatenation of the processes' parts, in rank order) has about ``batch_size`` rows.

        Raises
        ------
        ValueError
            A shard has fewer rows than there are steps (``batch_size`` smaller than the number of
            processes, or fewer chunks than processes: lower ``stream_chunk_size``).
        """
        sizes = self.shard_sizes(epoch, world_size)
        steps = self.steps_per_epoch(batch_size)
        if sizes.min() < steps:
            raise ValueError(f"process shard of {int(sizes.min())} rows for {steps} steps per epoch: each of the "
                             f"{world_size} processes needs at least one row per step (raise batch_size or lower "
                             "stream_chunk_size)")
        parts = np.stack([n // steps + (np.arange(steps) < n % steps) for n in sizes])  # (W, S)
        rows = self._rank_rows(epoch, rank, world_size)
        pending: list[RowBlock] = []
        have = 0
        for k in range(steps):
            need = int(parts[rank, k])
            while have < need:
                block = next(rows)
                pending.append(block)
                have += len(block)
            buf = RowBlock.concat(pending)
            part, rest = buf.take(slice(0, need)), buf.take(slice(need, None))
            pending, have = ([rest] if len(rest) else []), len(rest)
            yield BatchPart(part, int(parts[:, k].sum()), int(parts[:rank, k].sum()))

    # -- internals ---------------------------------------------------------------------------
    def _chunk_order(self, epoch: int, file_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, file_index, 0xC4])
        return rng.permutation(len(self.files[file_index].chunks))

    def _rank_rows(self, epoch: int, rank: int, world_size: int) -> Iterator[RowBlock]:
        """Blocks of this process's shard: both files interleaved in proportion, through the shuffle buffer."""
        rng = np.random.default_rng([self.seed, epoch, rank, 0xB0F])
        sources = []
        for i, f in enumerate(self.files):
            mine = self._chunk_order(epoch, i)[rank::world_size]
            sources.append(_ChunkSource(self, f, mine, rng))
        buffer: list[RowBlock] = []
        in_buffer = 0
        capacity = self.buffer_chunks * self.chunk_size
        while True:
            remaining = [s.remaining for s in sources]
            total = sum(remaining)
            if total > 0:
                m = min(self.chunk_size, total)
                takes = _proportional_take(remaining, m, rng)
                block = RowBlock.concat([s.take(t) for s, t in zip(sources, takes) if t > 0])
                buffer.append(block)
                in_buffer += len(block)
                if in_buffer < capacity and sum(s.remaining for s in sources) > 0:
                    continue
            if in_buffer == 0:
                return
            mixed = RowBlock.concat(buffer)
            mixed = mixed.take(rng.permutation(len(mixed)))
            out = min(self.chunk_size, len(mixed)) if total > 0 else len(mixed)
            yield mixed.take(slice(0, out))
            rest = mixed.take(slice(out, None))
            buffer, in_buffer = ([rest] if len(rest) else []), len(rest)


class _ChunkSource:
    """One file's chunks of a shard, in order, rows permuted within each chunk, held-out rows dropped."""

    def __init__(self, stream: TrainingStream, f: _File, chunk_ids: np.ndarray, rng: np.random.Generator):
        self.stream, self.f, self.ids, self.rng = stream, f, list(chunk_ids), rng
        self.remaining = int(f.train_rows_per_chunk[chunk_ids].sum()) if len(chunk_ids) else 0
        self.current: RowBlock | None = None
        self.pos = 0

    def take(self, n: int) -> RowBlock:
        out = []
        while n > 0:
            if self.current is None or self.pos >= len(self.current):
                start, stop = self.f.chunks[self.ids.pop(0)]
                _, rows = _read_rows(self.f, start, stop, self.stream.spec, self.stream.model_config,
                                     self.stream.redshift_col)
                rows = rows.take(~_validation_mask(self.f, start, stop))
                self.current, self.pos = rows.take(self.rng.permutation(len(rows))), 0
                continue
            t = min(n, len(self.current) - self.pos)
            out.append(self.current.take(slice(self.pos, self.pos + t)))
            self.pos += t
            n -= t
            self.remaining -= t
        return RowBlock.concat(out)


def _proportional_take(remaining: list[int], m: int, rng: np.random.Generator) -> list[int]:
    """How many of ``m`` rows come from each source: a multivariate hypergeometric draw (the
    counts a uniformly random interleaving of the sources' remaining rows would give)."""
    if len(remaining) == 1:
        return [m]
    return [int(t) for t in rng.multivariate_hypergeometric(np.asarray(remaining, np.int64), m)]


def _read_rows(f: _File, start: int, stop: int, spec: FeatureSpec, mc: ModelConfig,
               redshift_col: str) -> tuple[Photometry, RowBlock]:
    cols = list(dict.fromkeys(spec.columns + ([redshift_col] if f.labelled_file else [])))
    table = f.reader.read(start, stop, cols)
    try:
        phot = clean_photometry(table, spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise type(exc)(f"{f.reader.path!r} rows {start}-{stop}: {exc.args[0]}") from None
    if f.labelled_file:
        z = np.asarray(table[redshift_col])
        if z.dtype.kind not in "fiu":
            raise TypeError(f"column {redshift_col!r} (redshift_col) of {f.reader.path!r} must hold numbers, "
                            f"got dtype {z.dtype}")
        z = z.astype(np.float64)
        lab = np.isfinite(z) & (z > 0)
    else:
        z, lab = np.full(len(phot), np.nan), np.zeros(len(phot), bool)
    return phot, RowBlock.of(phot, z, lab, spec, mc)


def _validation_mask(f: _File, start: int, stop: int) -> np.ndarray:
    mask = np.zeros(stop - start, bool)
    lo, hi = np.searchsorted(f.validation_rows, [start, stop])
    mask[f.validation_rows[lo:hi] - start] = True
    return mask


def _column_roles(spec: FeatureSpec) -> list[str]:
    return (["magnitude"] * len(spec.bands) + [f"error of {b}" for b in spec.bands]
            + ["extra feature"] * len(spec.extra_cols))


def _empty_phot(spec: FeatureSpec) -> Photometry:
    nb, ne = len(spec.bands), len(spec.extra_cols)
    return Photometry(np.zeros((0, nb)), np.zeros((0, nb)), np.zeros((0, ne)), np.zeros((0, nb), bool))


def _fingerprint(readers: list[TableReader], *settings: Any) -> str:
    """A digest of the files (path, size, modification time, rows) and the stream settings."""
    h = hashlib.sha256(b"photovaez-stream-1")
    for r in readers:
        st = os.stat(r.path)
        h.update(json.dumps([os.path.abspath(r.path), st.st_size, st.st_mtime_ns, r.n_rows]).encode())
    h.update(json.dumps(settings, default=str).encode())
    return h.hexdigest()
