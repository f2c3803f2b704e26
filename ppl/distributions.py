"""Looking through NumPyro's distribution wrappers to the distribution they wrap.

Example:
    >>> import numpyro.distributions as dist
    >>> type(base_distribution(dist.Normal(0.0, 1.0).expand((3,)).to_event(1))).__name__
    'Normal'
"""

from __future__ import annotations

from typing import Any

from numpyro import distributions as dist

__all__ = ["base_distribution"]


def base_distribution(fn: Any) -> Any:
    """The distribution under NumPyro's ``expand`` / ``to_event`` wrappers."""
    while isinstance(fn, (dist.ExpandedDistribution, dist.Independent)):
        fn = fn.base_dist
    return fn
