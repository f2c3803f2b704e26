"""Velocity fields: a trainable MLP, and the exact field for a Gaussian target."""

from __future__ import annotations

import math
import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.flow_matching.checks import Field, _check_path, _positive_int
from inference.flow_matching.loss import _gamma

__all__ = ["VelocityMLP", "gaussian_velocity"]


class VelocityMLP(eqx.Module):
    """An MLP velocity field ``v(x, t)`` on ``[x, t, sin(pi 2^k t), cos(pi 2^k t)]``.

    ``depth`` hidden layers of ``width`` units with SiLU, ``time_frequencies`` Fourier
    frequencies ``pi 2^k`` (``k = 0, 1, ...``) for the time embedding, a linear output.
    ``x`` of shape ``(dim,)`` with a scalar ``t`` gives ``(dim,)``; a batch ``(n, dim)``
    with a scalar ``t`` or ``t`` of shape ``(n,)`` gives ``(n, dim)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = VelocityMLP(2, jax.random.key(0), width=32, depth=2)
        >>> v(jnp.zeros(2), 0.5).shape, v(jnp.zeros((7, 2)), 0.5).shape
        ((2,), (7, 2))
    """

    layers: tuple[eqx.nn.Linear, ...]
    dim: int = eqx.field(static=True)
    time_frequencies: int = eqx.field(static=True)

    def __init__(self, dim: int, key: jax.Array, width: int = 128, depth: int = 3,
                 time_frequencies: int = 4):
        dim = _positive_int("VelocityMLP", "dim", dim)
        width = _positive_int("VelocityMLP", "width", width)
        depth = _positive_int("VelocityMLP", "depth", depth)
        if isinstance(time_frequencies, bool) or not isinstance(time_frequencies, numbers.Integral) \
                or time_frequencies < 0:
            raise ValueError(f"VelocityMLP: time_frequencies must be an int >= 0; got "
                             f"{time_frequencies!r}.")
        self.dim, self.time_frequencies = dim, int(time_frequencies)
        sizes = [dim + 1 + 2 * self.time_frequencies] + [width] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys))

    def _embed(self, t: jax.Array) -> jax.Array:
        freqs = math.pi * 2.0 ** jnp.arange(self.time_frequencies, dtype=t.dtype)
        return jnp.concatenate([t[None], jnp.sin(freqs * t), jnp.cos(freqs * t)])

    def _one(self, x: jax.Array, t: jax.Array) -> jax.Array:
        h = jnp.concatenate([x, self._embed(t.astype(x.dtype))])
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return self.layers[-1](h)

    def __call__(self, x: jax.Array, t: Any) -> jax.Array:
        x, t = jnp.asarray(x), jnp.asarray(t)
        if x.shape[-1:] != (self.dim,) or x.ndim > 2:
            raise ValueError(f"VelocityMLP: x must have shape ({self.dim},) or (n, {self.dim}); "
                             f"got {x.shape}.")
        if x.ndim == 1:
            if t.ndim != 0:
                raise ValueError(f"VelocityMLP: t must be a scalar for one point; got {t.shape}.")
            return self._one(x, t)
        if t.ndim == 0:
            return jax.vmap(self._one, in_axes=(0, None))(x, t)
        if t.shape != x.shape[:1]:
            raise ValueError(f"VelocityMLP: t must be a scalar or of shape ({x.shape[0]},) for "
                             f"x of shape {x.shape}; got {t.shape}.")
        return jax.vmap(self._one)(x, t)


def gaussian_velocity(mean: Any, scale: Any = 1.0, path: str = "straight",
                      sigma: float | None = None) -> Field:
    """The optimal (marginal) velocity from ``N(0, I)`` to ``N(mean, diag(scale^2))``.

    For independent ``x0 ~ N(0, I)``, ``x1 ~ N(m, s^2)`` (per coordinate) and the path
    ``x_t = (1 - t) x0 + t x1 + gamma(t) z`` (see the module docstring), ``x_t`` and the
    target ``u_t = x1 - x0 + gamma'(t) z`` are jointly Gaussian with

        E x_t = t m,   Var x_t = (1 - t)^2 + t^2 s^2 + gamma^2,
        E u_t = m,     Cov(u_t, x_t) = t s^2 - (1 - t) + gamma gamma',

    so ``v*(x, t) = E[u_t | x_t = x] = m + Cov / Var * (x - t m)``. (At ``t = 0`` with
    ``gamma = 0`` this is ``m - x = E[x1 - x0 | x0 = x]``; at ``t = 1`` it is ``x``.)

    Example:
        >>> import jax.numpy as jnp
        >>> v = gaussian_velocity(jnp.array([1.0]), 2.0)
        >>> float(v(jnp.array([0.0]), 0.0)[0]), float(v(jnp.array([3.0]), 1.0)[0])
        (1.0, 3.0)
    """
    path, sigma = _check_path("gaussian_velocity", path, sigma)
    m = jnp.asarray(mean, jnp.result_type(float))
    s2 = jnp.asarray(scale, m.dtype) ** 2
    if jnp.any(s2 <= 0):
        raise ValueError(f"gaussian_velocity: scale must be positive; got {scale!r}.")

    def v(x: jax.Array, t: Any) -> jax.Array:
        t = jnp.asarray(t, m.dtype)
        g, dg = _gamma(path, sigma, t)
        var = (1 - t) ** 2 + t**2 * s2 + g**2
        cov = t * s2 - (1 - t) + g * dg
        return m + cov / var * (x - t * m)

    return v
