"""The conditional flow-matching loss along a straight or interpolant path."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from inference.flow_matching.checks import Field, _check_field, _check_path, _points

__all__ = ["cfm_loss"]


def _gamma(path: str, sigma: float, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noise scale ``gamma(t)`` and its derivative."""
    if path == "straight":
        return jnp.full_like(t, sigma), jnp.zeros_like(t)
    return sigma * jnp.sin(math.pi * t), math.pi * sigma * jnp.cos(math.pi * t)


def cfm_loss(v: Field, key: jax.Array, x0: Any, x1: Any, path: str = "straight",
             sigma: float | None = None) -> jax.Array:
    """Conditional flow-matching loss on the pairs ``(x0[i], x1[i])`` (mean over pairs).

    ``t ~ U(0, 1)`` and ``z ~ N(0, I)`` per pair from ``key``; the loss is the mean of
    ``|v(x_t, t) - u_t|^2`` (summed over coordinates) with ``x_t, u_t`` of ``path`` (module
    docstring). Independent ``x0, x1`` give (1-)rectified flow; coupled pairs reflow.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(0), (4096, 2)); x1 = x0 + 3.0
        >>> v = lambda x, t: jnp.full(2, 3.0)  # the exact velocity of this coupling
        >>> round(float(cfm_loss(v, jax.random.key(1), x0, x1)), 6)
        0.0
    """
    path, sigma = _check_path("cfm_loss", path, sigma)
    x0, x1 = _points("cfm_loss", "x0", x0), _points("cfm_loss", "x1", x1)
    if x0.shape != x1.shape:
        raise ValueError(f"cfm_loss: x0 and x1 must be pairs of the same shape (n, d); got "
                         f"{x0.shape} and {x1.shape}.")
    _check_field("cfm_loss", v, x0.shape[1], x0.dtype)
    return _cfm_loss(v, key, x0, x1, path, sigma)


def _cfm_loss(v, key, x0, x1, path, sigma):
    kt, kz = jax.random.split(key)
    t = jax.random.uniform(kt, (x0.shape[0],), x0.dtype)
    g, dg = _gamma(path, sigma, t)
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    target = x1 - x0
    if path == "interpolant" or sigma > 0:
        z = jax.random.normal(kz, x0.shape, x0.dtype)
        xt = xt + g[:, None] * z
        target = target + dg[:, None] * z
    pred = jax.vmap(v)(xt, t)
    return jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))
