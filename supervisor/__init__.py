"""modelserve's supervisor: keeps a set of MLflow registered models served behind one Nginx gateway.

Note: the import name ``supervisor`` is also used by supervisord's PyPI package; the two cannot
share one Python environment (see README).
"""

__version__ = "0.1.0"
