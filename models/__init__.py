"""Ready-made NumPyro models.

`models.posteriordb` holds twelve posteriors from the posteriordb project (model plus
data), six of them with Stan reference summaries used to check our samplers.
"""

import importlib
from typing import Any

__all__ = ["coopflow", "latent_flow", "posteriordb", "score_gmm", "toy2d"]


def __getattr__(name: str) -> Any:
    # Submodules load on first use: coopflow and latent_flow pull in flowjax and equinox.
    if name in __all__:
        return importlib.import_module(f"models.{name}")
    raise AttributeError(f"module 'models' has no attribute {name!r}")
