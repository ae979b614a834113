"""PhotoVAEz: photometric redshifts from a semi-supervised Skip Deep Generative Model.

The core package is framework-independent of RAIL: features, the PyTorch model, its loss and
training, amortised PDFs, the JAX export and the model posterior.  The RAIL stages live in
``rail.estimation.algos.photovaez``.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:
    # the version is written in one place, pyproject.toml; the installed metadata carries it
    __version__ = _distribution_version("pz-rail-photovaez")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
