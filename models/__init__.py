"""Ready-made NumPyro models.

`models.posteriordb` holds twelve posteriors from the posteriordb project (model plus
data), six of them with Stan reference summaries used to check our samplers.
"""

from . import posteriordb, score_gmm, toy2d

__all__ = ["posteriordb", "score_gmm", "toy2d"]
