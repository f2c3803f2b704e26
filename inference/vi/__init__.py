"""Variational inference: the ``fit`` driver, guides over a model's sites, the ``VI`` method.

``fit`` (the training loop), ``guides`` (mean-field, MVN, flow guides), ``method``
(``VI``, which ``infer`` runs).
"""

from inference.vi.method import *  # noqa: F401,F403
from inference.vi.method import _averaged, bind_kwargs, _draw, _keywords_last, _trace_log_density  # noqa: F401
