"""Objectives for hierarchical guides ``q(z) = int q(z, u) du``: HVI, IWHVI, DIWHVI."""

from __future__ import annotations

from typing import Callable, Sequence


from ppl.expectation import Expectation, density, expectation, sim
from ppl.marginal import marginal
from ppl.params import with_params

from ppl.objectives.particles import _check_count, log_mean_exp, particles


def hvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str]) -> Expectation:
    """Hierarchical VI (Ranganath et al. 2016; Agakov and Barber 2004): ELBO of a guide
    ``q(z) = int q(z, u) du`` whose auxiliary sites ``u`` are integrated out approximately.

    ``E_{(z, u) ~ q}[log p(x, z) - log (q(z, u) / r(u | z))] <= ELBO(q) <= log p(x)``, written as
    an ELBO whose guide is ``ppl.marginal(guide, keep, proposal=r, particles=1)``. ``keep``
    names the guide's sites that are the model's latents; ``proposal(values, *args)`` is the
    reverse model ``r(u | z)``, given the dict of kept values.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(numpyro.param("a", 0.5) * values["z"], 0.7))
        >>> obj = ppl.objectives.hvi(model, h_guide, reverse, keep=["z"])
        >>> obj.estimate(jax.random.key(0), {"m": 0.0, "a": 0.5}, 1.0).shape
        ()
    """

    @expectation
    def hvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        z, log_q = sim(marginal(q, keep, proposal=r, particles=1), *args)
        return density(p, z, *args) - log_q

    return hvi


def iwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
          K: int = 8) -> Expectation:
    """Importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    As :func:`hvi` with ``log q(z)`` estimated from the auxiliary draw and ``K`` reverse
    samples ``u_k ~ r(u | z)``: ``log (1/(K+1)) sum_{k=0..K} q(z, u_k) / r(u_k | z)``, i.e.
    ``ppl.marginal(guide, keep, proposal=r, particles=K + 1)``. ``HVI = IWHVI_0 <= IWHVI_K
    <= ELBO(q) <= log p(x)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(0.8 * values["z"], 0.7))
        >>> obj = ppl.objectives.iwhvi(model, h_guide, reverse, keep=["z"], K=4)
        >>> obj.grad_estimate(jax.random.key(0), {"m": 0.0}, 1.0)[0]["m"].shape
        ()
    """
    _check_count(K, "iwhvi: K", 0)

    @expectation
    def iwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        z, log_q = sim(marginal(q, keep, proposal=r, particles=K + 1), *args)
        return density(p, z, *args) - log_q

    return iwhvi


def diwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
           K: int = 4, M: int = 4) -> Expectation:
    """Doubly importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    IWAE over ``K`` draws ``z_k`` of the hierarchical guide, each ``log q(z_k)`` estimated
    as in :func:`iwhvi` with ``M`` reverse samples:
    ``E[log (1/K) sum_k p(x, z_k) / q_hat_M(z_k)] <= IWAE_K(q) <= log p(x)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(0.8 * values["z"], 0.7))
        >>> obj = ppl.objectives.diwhvi(model, h_guide, reverse, keep=["z"], K=3, M=2)
        >>> obj.estimate(jax.random.key(0), {"m": 0.0}, 1.0).shape
        ()
    """
    _check_count(K, "diwhvi: K")
    _check_count(M, "diwhvi: M", 0)

    @expectation
    def diwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        q_z = marginal(q, keep, proposal=r, particles=M + 1)

        def log_weight():
            z, log_q = sim(q_z, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return diwhvi
