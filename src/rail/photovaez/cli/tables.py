"""Files of the command line: tables read with ``tables_io`` (or, for hdf5, only their column
names), PDF files, output paths, and the checks that turn a bad input into one line."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CLIError", "check_columns", "check_file", "given_columns", "hdf5_columns", "out_path", "read_pdfs",
           "read_table"]


class CLIError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_table(obj: Any) -> bool:
    """A table (columns of arrays) rather than a mapping of tables (hdf5 groups, fits HDUs)."""
    if hasattr(obj, "columns") or hasattr(obj, "colnames"):  # DataFrame, astropy Table
        return True
    if isinstance(obj, Mapping):
        return not any(isinstance(v, Mapping) or hasattr(v, "columns") or hasattr(v, "colnames")
                       for v in obj.values())
    return isinstance(obj, np.ndarray) and obj.dtype.names is not None


def _as_dict(table: Any) -> dict[str, np.ndarray]:
    if isinstance(table, np.ndarray) and table.dtype.names is not None:
        return {k: np.asarray(table[k]) for k in table.dtype.names}
    names = list(table.colnames) if hasattr(table, "colnames") else list(table.keys())
    return {str(k): np.asarray(table[k]) for k in names}


def check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{what} path is a folder, not a file: {path}")


def _select_group(data: Any, group: str, path: str, what: str) -> Any:
    if _is_table(data):
        return data  # a flat file: the group does not apply
    if not isinstance(data, Mapping):
        raise CLIError(f"{what} file {path} does not hold a table (got {type(data).__name__})")
    keys = [str(k) for k in data.keys()]
    if group and group in data:
        sub = data[group]
        if not _is_table(sub):
            raise CLIError(f"group {group!r} of {what} file {path} holds groups {list(sub.keys())}, not a table")
        return sub
    if not group and len(keys) == 1:
        return data[keys[0]]
    raise CLIError(f"{what} file {path} has no group {group!r}; its groups are {keys} (use --group NAME)")


def read_table(path: str, group: str, what: str) -> dict[str, np.ndarray]:
    """The table in a file (any format ``tables_io`` reads) as a dict of numpy arrays."""
    import tables_io

    check_file(path, what)
    try:
        data = tables_io.read(path)
    except Exception as exc:  # noqa: BLE001 - tables_io raises many kinds
        raise CLIError(f"cannot read {what} file {path}: {_first_line(exc)}") from None
    return _as_dict(_select_group(data, group, path, what))


def hdf5_columns(path: str, group: str) -> tuple[str, list[str]] | None:
    """(group actually used, column names) of an hdf5 table file, or None if it is not one."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if group and group in f and isinstance(f[group], h5py.Group):
                node, used = f[group], group
            elif all(isinstance(v, h5py.Dataset) for v in f.values()) and len(f):
                node, used = f, ""
            elif not group and len(f) == 1 and isinstance(next(iter(f.values())), h5py.Group):
                used = next(iter(f.keys()))
                node = f[used]
            else:
                groups = [k for k, v in f.items() if isinstance(v, h5py.Group)]
                raise CLIError(f"input file {path} has no group {group!r}; its groups are {groups} "
                               "(use --group NAME)")
            if not all(isinstance(v, h5py.Dataset) for v in node.values()):
                return None
            return used, list(node.keys())
    except OSError:
        return None


def check_columns(columns: Sequence[str], needed: Mapping[str, str], path: str) -> None:
    """``needed`` maps column -> what names it; the first missing one is an error."""
    for col, what in needed.items():
        if col not in columns:
            shown = list(columns) if len(columns) <= 30 else list(columns)[:30] + ["..."]
            raise CLIError(f"column {col!r} ({what}) is not in {path}; its columns are {shown}")


def given_columns(opts: Mapping[str, Any]) -> dict[str, str]:
    """Column names given on the command line, with the option that names each."""
    out: dict[str, str] = {}
    for key in ("bands", "err_bands", "extra_cols"):
        for c in opts.get(key) or []:
            if isinstance(c, str):
                out.setdefault(c, "--" + key.replace("_", "-"))
    for key in ("ref_band", "redshift_col"):
        if isinstance(opts.get(key), str) and opts[key]:
            out.setdefault(opts[key], "--" + key.replace("_", "-"))
    return out


def out_path(path: str, what: str) -> str:
    """``path`` made absolute; its folder must exist."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise CLIError(f"folder of the {what} file does not exist: {folder}")
    return path


def read_pdfs(path: str) -> Any:
    """The ``qp.Ensemble`` in a file."""
    import qp

    check_file(path, "PDF")
    try:
        return qp.read(path)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot read PDFs (a qp ensemble) from {path}: {_first_line(exc)}") from None
