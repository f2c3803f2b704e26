"""Ready-made NumPyro models.

`models.posteriordb` holds twelve posteriors from the posteriordb project (model plus
data), six of them with Stan reference summaries used to check our samplers.
"""

from . import coopflow, latent_flow, posteriordb, score_gmm, toy2d

__all__ = ["coopflow", "latent_flow", "posteriordb", "score_gmm", "toy2d"]
