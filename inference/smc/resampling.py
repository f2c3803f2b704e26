"""Resampling schemes, the effective sample size and the adaptive choice of the next temperature."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp



def _normalized(log_weights: jax.Array) -> jax.Array:
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    return jax.nn.softmax(log_weights)


def _from_uniforms(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Indices ``i`` with ``cumsum(w)[i-1] <= u < cumsum(w)[i]`` for sorted ``u`` in [0, 1)."""
    cdf = jnp.cumsum(weights)
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    return jnp.clip(idx, 0, weights.shape[0] - 1)


def _systematic(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    u = (jax.random.uniform(key, dtype=weights.dtype) + jnp.arange(n, dtype=weights.dtype)) / n
    return _from_uniforms(weights, u)


def _stratified(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    u = (jax.random.uniform(key, (n,), dtype=weights.dtype) + jnp.arange(n, dtype=weights.dtype)) / n
    return _from_uniforms(weights, u)


def _multinomial(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    return _from_uniforms(weights, jnp.sort(jax.random.uniform(key, (n,), dtype=weights.dtype)))


#: Resampling schemes by name: ``(key, normalized weights (N,), n) -> indices (n,)``.
#: All are unbiased (each index ``i`` appears ``n w_i`` times in expectation); systematic and
#: stratified have lower variance than multinomial (Douc, Cappé & Moulines 2005).
RESAMPLING: dict[str, Callable] = {
    "systematic": _systematic,
    "stratified": _stratified,
    "multinomial": _multinomial,
}


def resample(key: jax.Array, log_weights: jax.Array, method: str = "systematic",
             num: int | None = None) -> jax.Array:
    """Ancestor indices drawn in proportion to ``exp(log_weights)`` (NaN counts as weight 0).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> idx = resample(jax.random.key(0), jnp.log(jnp.array([0.0, 0.5, 0.5])))
        >>> idx.shape, bool((idx > 0).all())  # particle 0 has weight 0
        ((3,), True)
    """
    if method not in RESAMPLING:
        raise ValueError(f"resample(method={method!r}): unknown; use one of {sorted(RESAMPLING)}.")
    n = log_weights.shape[0] if num is None else int(num)
    return RESAMPLING[method](key, _normalized(log_weights), n)


def _ess_fraction(log_weights: jax.Array) -> jax.Array:
    """``(sum w)^2 / (N sum w^2)`` in (0, 1]; 0 when every weight is 0."""
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    a = jax.nn.logsumexp(log_weights)
    b = jax.nn.logsumexp(2.0 * log_weights)
    frac = jnp.exp(2.0 * a - b) / log_weights.shape[0]
    return jnp.where(jnp.isfinite(a), frac, 0.0)


def _increment_weights(delta: jax.Array, loglik: jax.Array) -> jax.Array:
    # delta * (-inf) must be -inf for delta > 0 and 0 (not NaN) for delta == 0.
    return jnp.where(loglik == -jnp.inf, jnp.where(delta > 0, -jnp.inf, 0.0), delta * loglik)


def _next_temperature(loglik: jax.Array, beta: jax.Array, target_ess: float,
                      iterations: int = 60) -> jax.Array:
    """The largest ``beta' <= 1`` (up to bisection accuracy) with ESS fraction >= target_ess.

    If even an infinitesimal step falls below the target (some particles have zero
    likelihood and they are too many), the smallest bisection step is taken: resampling then
    removes those particles and the next stage proceeds normally.
    """
    dmax = 1.0 - beta
    ok_full = _ess_fraction(_increment_weights(dmax, loglik)) >= target_ess

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = _ess_fraction(_increment_weights(mid, loglik)) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(dmax), dmax))
    delta = jnp.where(lo > 0, lo, hi)
    return jnp.where(ok_full, jnp.ones_like(beta), jnp.minimum(beta + delta, 1.0))
