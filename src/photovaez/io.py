"""The model file: a plain dict of numpy arrays and settings, written atomically, read safely.

Layout (``FORMAT_VERSION`` 1)::

    format          "photovaez-model"
    format_version  1
    package_version the photovaez version that wrote it
    feature_spec    FeatureSpec.to_dict()   (columns, colours, limits, ...)
    scaler          {"mean": array, "std": array}  (feature standardisation)
    model_config    ModelConfig.to_dict()
    train_config    TrainConfig.to_dict()
    state           {parameter name: float32 array}  (the SDGM state_dict)
    report          training history and counters (plain numbers and lists)
    sed_basis       SEDBasis.to_dict(): the sed decoder's template and correction flux tables
                    (only for model_config decoder "sed")
    calibration     the amortised PDFs' temperature fit (when train_config calibrate)
    labelled_support  photovaez.support.support_to_dict(): labelled feature rows and their
                    leave-one-out neighbour-distance quantiles (the auto mode's extrapolation test)
    proposal        photovaez.proposal.proposal_to_dict(): the importance proposal's fitted
                    log-temperatures (absent: the untempered encoder)
    posterior_calibration  the snis model posterior's temperature fit (when train_config calibrate)

The file is a pickle of that dict (RAIL's ``.pkl`` model convention) but is read with a
restricted unpickler that only rebuilds builtin containers/scalars and numpy arrays/dtypes:
any other global (a class, a function) makes loading fail *before* anything is executed.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import pickle
import secrets
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np

from . import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "atomic_write", "save_model", "load_model",
           "validate_model_dict", "model_to_dict", "model_from_dict"]

FORMAT = "photovaez-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "package_version", "feature_spec", "scaler", "model_config", "state")

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


class ModelFileError(ValueError):
    """A model file or dict that is corrupt, unsafe, from a newer format, or not a PhotoVAEz model."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ModelFileError(
            f"refusing to load {module}.{name} from a model file: PhotoVAEz model files hold only "
            "plain data (dicts, lists, numbers, strings, numpy arrays)"
        )


def _plain(obj: Any) -> Any:
    """Convert to plain data: dicts, lists, Python scalars, numpy arrays."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "detach"):  # a torch tensor
        return obj.detach().cpu().numpy()
    raise TypeError(f"cannot store {type(obj).__name__} in a model file")


def validate_model_dict(d: Any, source: str = "model") -> dict:
    """Check that ``d`` is a PhotoVAEz model dict this version can read; return it."""
    if not isinstance(d, dict):
        raise ModelFileError(f"{source}: expected a PhotoVAEz model dict, got {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not a PhotoVAEz model (format={d.get('format')!r}, expected {FORMAT!r})")
    version = d.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{source}: format_version missing or not an integer ({version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: model file format version {version} is newer than this photovaez "
            f"({__version__}) reads (<= {FORMAT_VERSION}); it was written by photovaez "
            f"{d.get('package_version')}. Upgrade photovaez to read it."
        )
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ModelFileError(f"{source}: model dict lacks the keys {missing}")
    return d


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a file atomically: an interruption leaves the previous file or the new one, never half.

    The caller writes to the yielded binary handle, which is a temporary file in the same folder
    (created with the usual permissions); when the ``with`` block ends normally it is flushed,
    fsync'ed and renamed over ``path`` (``os.replace``).  If the block raises, the temporary file
    is removed, ``path`` is left as it was and the exception propagates.  The folder is created if
    needed.

    Parameters
    ----------
    path
        The file to write.

    Yields
    ------
    BinaryIO
        The open temporary file.

    Examples
    --------
    >>> with atomic_write(path) as fh:  # doctest: +SKIP
    ...     pickle.dump(obj, fh)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_model(d: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a model dict atomically (:func:`atomic_write`), after checking it is one.

    Parameters
    ----------
    d
        The model dict (:func:`model_to_dict`); converted to plain data first.
    path
        Where to write it (a pickle, read back with :func:`load_model`).
    """
    d = validate_model_dict(_plain(d), str(path))
    with atomic_write(path) as fh:
        pickle.dump(d, fh, protocol=pickle.HIGHEST_PROTOCOL)


def loads_model(data: bytes, source: str = "model") -> dict:
    """Read a model dict from bytes with the restricted unpickler."""
    try:
        d = _SafeUnpickler(_io.BytesIO(data)).load()
    except ModelFileError:
        raise
    except Exception as exc:  # truncated / corrupt pickle streams raise many types
        raise ModelFileError(f"{source}: corrupt or truncated model file ({type(exc).__name__}: {exc})") from None
    return validate_model_dict(d, source)


def load_model(path: str | os.PathLike) -> dict:
    """Read a model file safely (see the module docstring) and check its format version."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    with open(path, "rb") as f:
        return loads_model(f.read(), path)


def model_to_dict(model, spec, scaler, train_config, report: Mapping[str, Any] | None = None) -> dict:
    """Assemble the plain model dict of a trained :class:`photovaez.model.SDGM` (with its
    ``sed_basis`` when the decoder is ``"sed"``)."""
    extra = {"sed_basis": model.sed_decoder.basis.to_dict()} if model.config.decoder == "sed" else {}
    return _plain(
        {
            **extra,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "feature_spec": spec.to_dict(),
            "scaler": scaler.to_dict(),
            "model_config": model.config.to_dict(),
            "train_config": train_config.to_dict(),
            "state": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
            "report": dict(report or {}),
        }
    )


def model_from_dict(d: Mapping[str, Any]):
    """Rebuild the PyTorch SDGM (CPU, eval mode) from a model dict."""
    import torch

    from .config import ModelConfig
    from .model import SDGM

    d = validate_model_dict(dict(d))
    config = ModelConfig.from_stored(d["model_config"])
    basis = None
    if config.decoder == "sed":
        from .sed_decoder import SEDBasis

        if "sed_basis" not in d:
            raise ModelFileError("model with decoder 'sed' lacks its sed_basis")
        basis = SEDBasis.from_dict(d["sed_basis"])
    model = SDGM(config, basis)
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in d["state"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"model state does not match its model_config: {exc}") from None
    return model.eval()
