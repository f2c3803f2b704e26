"""Log densities of a model at given values of its latent sites (constrained space)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer import util as numpyro_util

from ppl.tracing import check_arguments


def log_density(model: Callable, values: dict[str, Any], *args: Any, **kwargs: Any) -> jax.Array:
    """Joint log density ``log p(values, observed data)`` of ``model``, in constrained space.

    ``values`` maps latent site names to values; observed sites, ``factor`` terms and
    plate subsampling scales are included, as in NumPyro.

    Example:
        >>> import numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
        ...     ppl.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> round(float(log_density(model, {"mu": 0.0}, y=0.0)), 4)
        -1.8379
    """
    check_arguments(model, args, kwargs)
    value, _ = numpyro_util.log_density(model, args, kwargs, values)
    return value


def site_log_densities(
    model: Callable, values: dict[str, Any], *args: Any, **kwargs: Any
) -> dict[str, jax.Array]:
    """Each sample site's summed log density (observed and latent), keyed by site name.

    Used to say *which* site makes a log density non-finite.

    Example:
        >>> import numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
        ...     ppl.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> sorted(site_log_densities(model, {"mu": 0.0}, y=0.0))
        ['mu', 'y']
    """
    check_arguments(model, args, kwargs)
    substituted = handlers.substitute(handlers.seed(model, rng_seed=0), data=values)
    trace = handlers.trace(substituted).get_trace(*args, **kwargs)
    out = {}
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        term = jnp.sum(site["fn"].log_prob(site["value"]))
        if site.get("scale") is not None:
            term = site["scale"] * term
        out[name] = term
    return out
