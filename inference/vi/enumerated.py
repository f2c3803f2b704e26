"""A model with enumerated discrete sites, as VI and NeuTra see it: the discrete sites summed out.

A model whose discrete sites are marked ``infer={"enumerate": "parallel"}`` (or wrapped in
``numpyro.contrib.funsor.config_enumerate``) has, over its continuous sites, the density
``log p(x, z_c) = log sum_{z_d} p(x, z_c, z_d)`` that :func:`ppl.potential` uses (NumPyro's
enumeration: parallel over plates, the forward algorithm through
``numpyro.contrib.control_flow.scan``). A guide then covers the continuous sites only, and
the discrete ones are drawn afterwards from their exact conditionals (``infer`` does it for
every method), so the joint draws are as exact as the guide.

:func:`marginal_program` is that density as a program the objectives can use unchanged
(``ppl.density`` of it is the enumerated log density): each continuous latent site is a
sample site with a flat placeholder density (``ImproperUniform`` on the site's support, log
density 0), the model's own ``numpyro.param`` sites are declared again (so
``ppl.with_params`` sets them), and one ``numpyro.factor`` adds
:func:`enumerated_log_density` at those values. It is a density, not a simulator: every
objective of ``ppl.objectives`` only evaluates the model's density, which is what it gives;
drawing from it (``ppl.sim`` of the model in a custom objective) is refused by NumPyro
(``ImproperUniform`` cannot be sampled).

Example:
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
    >>> from ppl.enumeration import enumeration_of
    >>> from ppl.tracing import trace_model
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    ...     z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
    ...     numpyro.sample("y", dist.Normal(mu + 4.0 * z, 1.0), obs=y)
    >>> y = jnp.array(1.0)
    >>> trace = trace_model(model, y)
    >>> marginal = marginal_program(model, (y,), {}, trace, enumeration_of(model, (y,), {}, trace))
    >>> like = lambda m: dist.Normal(m, 1.0).log_prob(y)  # p(mu) (p(y|mu, 0) + p(y|mu, 1)) / 2
    >>> exact = dist.Normal(0.0, 3.0).log_prob(0.5) + jnp.logaddexp(like(0.5), like(4.5))
    >>> exact = exact - jnp.log(2.0)
    >>> bool(jnp.isclose(ppl.density(marginal, {"mu": jnp.array(0.5)}, y), exact))
    True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from ppl.enumeration import Enumeration
from ppl.tracing import latent_sites, model_name

__all__ = ["marginal_program", "enumerated_log_density", "continuous_sites"]

#: The factor of :func:`marginal_program` that carries the enumerated log density.
FACTOR = "_enumerated.log_density"


def continuous_sites(trace: dict, enumeration: Enumeration | None) -> dict[str, dict]:
    """The latent sites of a traced model that are not summed out, in model order.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        >>> list(continuous_sites(trace_model(model), None)), list(continuous_sites(
        ...     trace_model(model), Enumeration(("z",), -1, ((2,), 8))))
        (['mu', 'z'], ['mu'])
    """
    summed = set(enumeration.sites) if enumeration is not None else set()
    return {n: s for n, s in latent_sites(trace).items() if n not in summed}


def enumerated_log_density(model: Callable, enumeration: Enumeration, args: tuple,
                           kwargs: dict, values: dict[str, Any]) -> jax.Array:
    """``log sum_{z_d} p(x, values, z_d)``: the joint log density at the constrained values
    of the continuous latent sites, the enumerated discrete sites summed out (NumPyro's
    enumeration, as :meth:`ppl.enumeration.Enumeration.log_density` runs it, without the
    log-Jacobians of the unconstrained space). Hidden from enclosing handlers.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from ppl.enumeration import enumeration_of
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     numpyro.sample("x", dist.Normal(2.0 * z, 1.0))
        >>> e = enumeration_of(model, (), {}, trace_model(model))
        >>> lp = enumerated_log_density(model, e, (), {}, {"x": jnp.array(1.0)})
        >>> bool(jnp.isclose(lp, dist.Normal(0.0, 1.0).log_prob(1.0)))  # symmetric at x = 1
        True
    """
    from numpyro.contrib.funsor import log_density

    with handlers.block():
        value, _ = log_density(enumeration.enumerated_model(model), tuple(args), dict(kwargs),
                               dict(values))
    return value


def marginal_program(model: Callable, args: tuple, kwargs: dict, trace: dict,
                     enumeration: Enumeration) -> Callable:
    """``model`` with its enumerated discrete sites summed out, as a program whose
    ``ppl.density`` at the continuous sites' constrained values is
    :func:`enumerated_log_density` (see the module docstring).

    ``trace`` is the model's trace on ``args``/``kwargs`` (:func:`ppl.tracing.trace_model`):
    it gives the continuous sites' supports and shapes, and the model's param sites. The
    program takes the model's arguments.
    """
    sites = {name: (site["fn"].support, tuple(jnp.shape(site["value"])),
                    tuple(site["fn"].event_shape))
             for name, site in continuous_sites(trace, enumeration).items()}
    params = {name: (site["args"], {k: v for k, v in site["kwargs"].items()
                                    if k in ("constraint", "event_dim")})
              for name, site in trace.items() if site["type"] == "param"}

    def marginal(*args: Any, **kwargs: Any) -> None:
        values = {}
        for name, (support, shape, event_shape) in sites.items():
            batch_shape = shape[:len(shape) - len(event_shape)]
            values[name] = numpyro.sample(
                name, dist.ImproperUniform(support, batch_shape, event_shape))
        param_values = {name: numpyro.param(name, *a, **kw) for name, (a, kw) in params.items()}
        inner = handlers.substitute(model, data=param_values) if param_values else model
        numpyro.factor(FACTOR, enumerated_log_density(inner, enumeration, args, kwargs, values))

    marginal.__name__ = marginal.__qualname__ = f"marginal_{model_name(model)}"
    return marginal
