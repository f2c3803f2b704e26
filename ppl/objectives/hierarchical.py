"""Objectives for hierarchical guides ``q(z) = int q(z, u) du``: HVI, IWHVI, DIWHVI.

Particle counts are totals, as in :func:`ppl.objectives.iwae` and :func:`ppl.marginal`:
``iwhvi(..., particles=n)`` estimates ``log q(z)`` from ``n`` weights (the guide's own
auxiliary draw and ``n - 1`` reverse samples), and ``diwhvi(..., K, inner_particles=m)``
averages ``K`` outer weights, each with an ``m``-weight inner estimate. The older ``K`` of
``iwhvi`` and ``M`` of ``diwhvi`` counted only the reverse samples (one fewer); they are
deprecated (a ``DeprecationWarning`` names the total to pass) and keep that meaning for one
release.
"""

from __future__ import annotations

import warnings
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


def _total_particles(total: int | None, old: int | None, default: int, what: str,
                     new_name: str, old_name: str) -> int:
    """The total particle count from the new keyword ``total`` or the deprecated ``old``
    (which counted only the reverse samples beyond the guide's own draw: ``old + 1`` in all)."""
    if old is not None:
        if total is not None:
            raise ValueError(
                f"{what}: got both {old_name}={old!r} (deprecated: reverse samples beyond the "
                f"guide's own draw) and {new_name}={total!r} (the total); pass only "
                f"{new_name}."
            )
        _check_count(old, f"{what}: {old_name}", 0)
        warnings.warn(
            f"{what}({old_name}={old}) counts only the reverse samples beyond the guide's own "
            f"auxiliary draw ({old + 1} particles in all), unlike iwae(K), which counts every "
            f"particle; this meaning is deprecated and {old_name} will be removed in the next "
            f"release. Pass {new_name}={old + 1} (the total) for the same bound.",
            DeprecationWarning, stacklevel=3,
        )
        return old + 1
    if total is None:
        return default
    return _check_count(total, f"{what}: {new_name}", 1)


def iwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
          K: int | None = None, *, particles: int | None = None) -> Expectation:
    """Importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    As :func:`hvi` with ``log q(z)`` estimated from ``particles`` weights in all, as every
    objective here counts particles: the guide's own auxiliary draw ``u_1`` and
    ``particles - 1`` reverse samples ``u_k ~ r(u | z)``,
    ``log (1/particles) sum_k q(z, u_k) / r(u_k | z)``, i.e.
    ``ppl.marginal(guide, keep, proposal=r, particles=particles)``. ``HVI = IWHVI(particles=1)
    <= IWHVI(particles=n) <= IWHVI(particles=n + 1) <= ELBO(q) <= log p(x)``. Default
    ``particles=8``.

    ``K`` is deprecated: it counted only the reverse samples (``K + 1`` particles in all,
    the paper's convention); it still works with that meaning, with a ``DeprecationWarning``
    saying which ``particles`` to pass, for one release.

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
        >>> obj = ppl.objectives.iwhvi(model, h_guide, reverse, keep=["z"], particles=5)
        >>> obj.grad_estimate(jax.random.key(0), {"m": 0.0}, 1.0)[0]["m"].shape
        ()
    """
    n = _total_particles(particles, K, 8, "iwhvi", "particles", "K")

    @expectation
    def iwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        z, log_q = sim(marginal(q, keep, proposal=r, particles=n), *args)
        return density(p, z, *args) - log_q

    return iwhvi


def diwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
           K: int = 4, M: int | None = None, *, inner_particles: int | None = None
           ) -> Expectation:
    """Doubly importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    IWAE over ``K`` draws ``z_k`` of the hierarchical guide, each ``log q(z_k)`` estimated
    as in :func:`iwhvi` with ``inner_particles`` weights in all (the draw's own auxiliary
    value and ``inner_particles - 1`` reverse samples):
    ``E[log (1/K) sum_k p(x, z_k) / q_hat(z_k)] <= IWAE_K(q) <= log p(x)``. Both counts are
    totals, as in every objective here; ``K * inner_particles`` weights of the guide in all.
    Default ``K=4``, ``inner_particles=4``.

    ``M`` is deprecated: it counted only the reverse samples (``M + 1`` inner particles in
    all); it still works with that meaning, with a ``DeprecationWarning`` saying which
    ``inner_particles`` to pass, for one release.

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
        >>> obj = ppl.objectives.diwhvi(model, h_guide, reverse, keep=["z"], K=3,
        ...                             inner_particles=3)
        >>> obj.estimate(jax.random.key(0), {"m": 0.0}, 1.0).shape
        ()
    """
    _check_count(K, "diwhvi: K")
    m = _total_particles(inner_particles, M, 4, "diwhvi", "inner_particles", "M")

    @expectation
    def diwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        q_z = marginal(q, keep, proposal=r, particles=m)

        def log_weight():
            z, log_q = sim(q_z, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return diwhvi
