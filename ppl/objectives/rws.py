"""Reweighted wake-sleep (wake-p, wake-q) and the forward KL."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ppl.expectation import Expectation, density, expectation, sim
from ppl.marginal import normalize
from ppl.params import no_grad, with_params

from ppl.objectives.particles import _check_count, log_mean_exp, particles


def rws_wake_p(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """Reweighted wake-sleep, wake phase for the model (Bornschein and Bengio, 2015).

    IWAE_K with the guide's parameters held fixed (``ppl.no_grad``): its gradient,
    ``sum_k wbar_k d log p(x, z_k)``, is the RWS model update.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> g = ppl.objectives.rws_wake_p(model, guide).grad_estimate(jax.random.key(0), params, 1.0)
        >>> float(g[0]["m"])  # the guide's parameters get no gradient
        0.0
    """
    _check_count(K, "rws_wake_p: K")

    @expectation
    def rws_wake_p(params, *args):
        p, q = with_params((model, no_grad(guide)), params)

        def log_weight():
            z, log_q = sim(q, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return rws_wake_p


def rws_wake_q(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """Reweighted wake-sleep, wake phase for the guide: ``E[sum_k wbar_k log q(z_k)]``.

    ``z_k`` are drawn from the guide with its parameters held fixed and ``wbar`` are the
    self-normalised importance weights ``p(x, z_k) / q(z_k)``, also held fixed, so the
    gradient is the RWS guide update ``sum_k wbar_k d log q(z_k)``: a self-normalised
    estimate of ``-d KL(p(z | x) || q)``. The model's parameters get no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> g = ppl.objectives.rws_wake_q(model, guide).grad_estimate(jax.random.key(0), params, 1.0)
        >>> sorted(g[0])
        ['log_s', 'm']
    """
    _check_count(K, "rws_wake_q: K")

    @expectation
    def rws_wake_q(params, *args):
        p, r, q = with_params((no_grad(model), no_grad(guide), guide), params)

        def particle():
            z, log_r = sim(r, *args)
            return density(p, z, *args) - log_r, density(q, z, *args)

        log_w, log_q = particles(particle, K)
        return jnp.sum(jax.nn.softmax(log_w) * log_q)

    return rws_wake_q


def forward_kl(model: Callable, guide: Callable, K: int = 16) -> Expectation:
    """Forward (inclusive) KL, ``E_{z ~ p(z | x)}[log q(z)] = -KL(p(z | x) || q) - H[p(z | x)]``.

    The posterior is approximated with ``ppl.normalize(model, proposal=guide, particles=K)``
    (sampling importance resampling from the guide, parameters held fixed): the
    self-normalised importance sampling variant, as in the RWS wake-phase guide update (whose
    Rao-Blackwellised form is :func:`rws_wake_q`). Maximizing it fits ``q`` to the posterior
    in the mass-covering direction; the model's parameters get no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> obj = ppl.objectives.forward_kl(model, guide, K=8)
        >>> obj.estimate(jax.random.key(0), params, 1.0).shape
        ()
    """
    _check_count(K, "forward_kl: K")

    @expectation
    def forward_kl(params, *args):
        p, r, q = with_params((no_grad(model), no_grad(guide), guide), params)
        z, _ = sim(normalize(p, proposal=r, particles=K), *args)
        return density(q, z, *args)

    return forward_kl
