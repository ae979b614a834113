"""The ``photovaez`` command: train, estimate, evaluate and plot from table files.

::

    photovaez train TRAIN_FILE --model OUT.pkl [--unlabeled FILE] [--group photometry] [options]
    photovaez estimate MODEL INPUT_FILE --output OUT.hdf5 [--group ...] [--posterior amortized] [options]
    photovaez evaluate PDFS.hdf5 TRUTH_FILE [--redshift-col redshift] [--json OUT.json]
    photovaez plot PDFS.hdf5 TRUTH_FILE --out-dir DIR [--model MODEL]
    photovaez compare TRAIN_FILE TEST_FILE --out DIR [--unlabeled FILE] [--estimators A,B] [--set PhotoVAEz.epochs=50]

``compare`` runs PhotoVAEz and RAIL's other installed estimators on the same files
(:func:`rail.photovaez.compare.compare`).  ``train`` and ``estimate`` run the RAIL stages :class:`PhotoVAEzInformer` and
:class:`PhotoVAEzEstimator` (the same code as a ceci pipeline or a notebook).  Their options are
generated from the stages' ``config_options``: ``--epochs 50``, ``--hidden 512,256,128`` (or JSON
``[512,256,128]``), ``--mag-limits '{"mag_u_lsst": 27.8, ...}'``, ``--resample false``; ``--help``
lists every option with its meaning.  Tables are read with ``tables_io`` (hdf5, parquet, fits,
...); ``--group`` names the hdf5 group (``''`` for a flat file; a flat file is used as it is).

Errors in the inputs (a missing file, group or column, an invalid option) print one line naming
the problem and exit with status 2.

The modules: :mod:`.options` (options generated from ``config_options`` and their parsers),
:mod:`.tables` (files in and out, the input checks), :mod:`.commands` (one function a command),
:mod:`.parser` (the argument parser and :func:`main`).  ``python -m rail.photovaez.cli`` runs it too.
"""

from .parser import build_parser, main
from .tables import CLIError

__all__ = ["main", "build_parser", "CLIError"]
