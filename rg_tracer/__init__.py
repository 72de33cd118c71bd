"""rg-tracer: DAPO training on GEPA reward vectors, and analysis of how each axis moves.

This package imports nothing heavy at import time: ``rg_tracer.schema`` must stay
importable by ``analysis`` without torch.
"""

__version__ = "0.1.0"
