"""PhotoVAEz: photometric redshifts from a semi-supervised Skip Deep Generative Model.

The core package is framework-independent of RAIL: features, the PyTorch model, its loss and
training, amortised PDFs, the JAX export and the model posterior.  The RAIL stages live in
``rail.estimation.algos.photovaez``.
"""

__version__ = "0.1.0"
