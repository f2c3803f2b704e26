"""Weak-derivative (measure-valued derivative) decompositions of distributions.

For a parameter ``theta`` of ``p_theta``: ``d/dtheta E[f(x)] = c (E_{x~p+}[f] - E_{x~p-}[f])``.
Each distribution here gives, per *canonical* parameter and per element of the value:
the constant ``c``, a draw ``x+`` and a draw ``x-`` (``None`` when ``x-`` may be taken to be
the primal draw itself, which is a valid coupling because ``p- = p``).

- Bernoulli(p), w.r.t. ``p``: ``c = 1``, ``x+ = 1``, ``x- = 0``.
- Categorical(probs), w.r.t. ``probs[j]``: ``c = 1``, ``x+ = j``, ``x- =`` the primal draw
  (exact on the simplex, where the tangents of ``probs`` sum to zero).
- Poisson(rate): ``c = 1``, ``x+ = N + 1``, ``x- = N`` (the primal draw ``N``).
- Normal(mu, s), w.r.t. ``mu``: ``c = 1/(s sqrt(2 pi))``, ``x+- = mu +- s R``, ``R ~ Rayleigh(1)``;
  w.r.t. ``s``: ``c = 1/s``, ``x+ ~`` double-sided Maxwell(mu, s), ``x- =`` the primal draw.

Any other parameterization (``logits``) reaches these through the chain rule: the ADEV
interpreter pushes the leaves' tangents through :func:`canonical`.

Example:
    >>> import jax, numpyro.distributions as dist
    >>> has_mvd(dist.Poisson(3.0)), has_mvd(dist.Gamma(1.0, 1.0))
    (True, False)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import distributions as dist

from ppl.distributions import base_distribution

__all__ = ["has_mvd", "canonical", "parts"]

_BERNOULLI = (dist.BernoulliProbs, dist.BernoulliLogits)
_CATEGORICAL = (dist.CategoricalProbs, dist.CategoricalLogits)


def has_mvd(fn: Any) -> bool:
    """Whether ``fn`` (possibly under ``expand`` / ``to_event``) has a known decomposition.

    Example:
        >>> import numpyro.distributions as dist
        >>> has_mvd(dist.Normal(0.0, 1.0).expand((3,)).to_event(1))
        True
    """
    return isinstance(base_distribution(fn), _BERNOULLI + _CATEGORICAL + (dist.Poisson, dist.Normal))


def canonical(fn: Any, shape: tuple) -> tuple:
    """The canonical parameters of ``fn``, broadcast to the value shape ``shape``.

    Categorical's ``probs`` get a trailing category axis.

    Example:
        >>> import numpyro.distributions as dist
        >>> [p.shape for p in canonical(dist.Normal(0.0, 1.0), (2,))]
        [(2,), (2,)]
    """
    base = base_distribution(fn)
    if isinstance(base, _BERNOULLI):
        return (jnp.broadcast_to(base.probs, shape),)
    if isinstance(base, _CATEGORICAL):
        probs = base.probs
        return (jnp.broadcast_to(probs, tuple(shape) + probs.shape[-1:]),)
    if isinstance(base, dist.Poisson):
        return (jnp.broadcast_to(base.rate, shape),)
    if isinstance(base, dist.Normal):
        return (jnp.broadcast_to(base.loc, shape), jnp.broadcast_to(base.scale, shape))
    raise TypeError(f"no weak-derivative decomposition for {type(fn).__name__}")


def _double_sided_maxwell(key: jax.Array, shape: tuple) -> jax.Array:
    k1, k2 = jax.random.split(key)
    chi3 = jnp.sqrt(jnp.sum(jax.random.normal(k1, tuple(shape) + (3,)) ** 2, axis=-1))
    sign = jnp.where(jax.random.bernoulli(k2, 0.5, shape), 1.0, -1.0)
    return sign * chi3


def parts(key: jax.Array, fn: Any, x: jax.Array) -> tuple:
    """Per canonical parameter: ``(c, x_plus, x_minus_or_None)``, shaped like :func:`canonical`.

    ``key`` is the site's key (independent of the primal draw's use of it through
    ``fold_in``); ``x`` is the primal draw.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> [(float(c), int(xp), int(xm)) for c, xp, xm in
        ...  parts(jax.random.key(0), dist.Bernoulli(0.3), jnp.asarray(0))]
        [(1.0, 1, 0)]
    """
    base = base_distribution(fn)
    shape = jnp.shape(x)
    if isinstance(base, _BERNOULLI):
        one = jnp.ones(shape, x.dtype)
        return ((jnp.ones(shape), one, jnp.zeros(shape, x.dtype)),)
    if isinstance(base, _CATEGORICAL):
        k = base.probs.shape[-1]
        xp = jnp.broadcast_to(jnp.arange(k, dtype=x.dtype), tuple(shape) + (k,))
        return ((jnp.ones(xp.shape), xp, None),)
    if isinstance(base, dist.Poisson):
        return ((jnp.ones(shape), x + 1, None),)
    if isinstance(base, dist.Normal):
        loc, scale = canonical(fn, shape)
        r = jax.random.rayleigh(jax.random.fold_in(key, 1), 1.0, shape)
        m = _double_sided_maxwell(jax.random.fold_in(key, 2), shape)
        c_loc = 1.0 / (scale * math.sqrt(2 * math.pi))
        return (
            (c_loc, loc + scale * r, loc - scale * r),
            (1.0 / scale, loc + scale * m, None),
        )
    raise TypeError(f"no weak-derivative decomposition for {type(fn).__name__}")
