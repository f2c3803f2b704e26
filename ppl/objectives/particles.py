"""Shared pieces of the multi-particle objectives: ``particles`` (vmap over K) and ``log_mean_exp``."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp



def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}.")
    return value


def particles(fn: Callable, K: int):
    """``fn()`` for ``K`` independent particles, stacked (``jax.vmap`` over the particle index).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> @ppl.expectation
        ... def spread():
        ...     z = particles(lambda: ppl.sim(lambda: numpyro.sample("z", dist.Normal(0., 1.)))[0]["z"], 5)
        ...     return z.std()
        >>> float(spread.estimate(jax.random.key(0))) > 0
        True
    """
    return jax.vmap(lambda _: fn())(jnp.arange(K))


def log_mean_exp(log_w: jax.Array) -> jax.Array:
    """``log (1/K) sum_k exp(log_w[k])`` over the leading axis, stably.

    Example:
        >>> import jax.numpy as jnp
        >>> float(log_mean_exp(jnp.log(jnp.array([1.0, 3.0]))))  # doctest: +ELLIPSIS
        0.693...
    """
    return logsumexp(log_w, axis=0) - math.log(log_w.shape[0])
