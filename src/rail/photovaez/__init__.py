"""RAIL plugin package of PhotoVAEz: re-exports the stages so that RAIL's discovery
(``rail.stages.import_and_attach_all``) registers them."""

from photovaez import __version__ as __version__
from rail.estimation.algos.photovaez import *  # noqa: F401,F403
