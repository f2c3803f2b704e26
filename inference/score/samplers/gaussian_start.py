"""The analytical start: the exact probability-flow map of the data's Gaussian approximation."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.score.processes import Process

__all__ = ["GaussianStart", "gaussian_flow"]


class GaussianStart(eqx.Module):
    """The analytical start: follow the Gaussian approximation's exact flow down to ``t``.

    For data ``N(mean, cov)`` the probability-flow ODE is linear and solvable: in the
    eigenbasis of ``cov`` each whitened coordinate ``(x - a mean) / sqrt(a^2 lambda + s^2)``
    is constant along the flow. At high noise the true score is close to that Gaussian's,
    so the solver may start at ``t`` from ``gaussian_flow(x_T)`` and spend its steps below.

    Example:
        >>> import jax.numpy as jnp
        >>> gs = GaussianStart.fit(jnp.array([[0.0, 1.0], [2.0, -1.0], [1.0, 0.0]]), t=0.5)
        >>> gs.cov.shape, gs.t
        ((2, 2), 0.5)
    """

    mean: jax.Array
    cov: jax.Array
    t: float

    @classmethod
    def fit(cls, data: jax.Array, t: float) -> "GaussianStart":
        """Mean and covariance of ``data`` (rows are draws, flattened)."""
        x = jnp.asarray(data).reshape(jnp.shape(data)[0], -1)
        return cls(jnp.mean(x, 0), jnp.atleast_2d(jnp.cov(x, rowvar=False)), float(t))


def gaussian_flow(proc: Process, mean: jax.Array, cov: jax.Array, x: jax.Array,
                  t_from, t_to) -> jax.Array:
    """The exact probability-flow map from ``t_from`` to ``t_to`` when the data are
    ``N(mean, cov)``; ``x`` is ``(n, ...)`` with ``prod(...) = len(mean)``.

    Example:
        >>> from inference.score import VE
        >>> import jax.numpy as jnp
        >>> p = VE(sigma_min=1e-3, sigma_max=10.0)
        >>> y = gaussian_flow(p, jnp.zeros(1), jnp.ones((1, 1)), jnp.array([[10.0]]), 1.0, 0.0)
        >>> round(float(y[0, 0]), 3)  # 10 * sqrt(1 + 1e-6) / sqrt(1 + 100)
        0.995
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if flat.shape[1] != mean.shape[0] or cov.shape != (mean.shape[0],) * 2:
        raise ValueError(f"gaussian_flow: x has {flat.shape[1]} dimensions per draw but mean "
                         f"{mean.shape} and cov {cov.shape}.")
    lam, U = jnp.linalg.eigh(0.5 * (cov + cov.T))
    lam = jnp.maximum(lam, 0.0)
    a0, s0 = proc.marginal(t_from)
    a1, s1 = proc.marginal(t_to)
    ratio = jnp.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    z = (flat - a0 * mean) @ U
    return (a1 * mean + (z * ratio) @ U.T).reshape(x.shape)


def _start(proc: Process, x, start: GaussianStart | None):
    if start is None:
        return x, None
    t = float(start.t)
    if not (proc.t_min < t <= proc.t_max):
        raise ValueError(f"GaussianStart.t={t} must lie in ({proc.t_min}, {proc.t_max}].")
    return gaussian_flow(proc, start.mean, start.cov, x, proc.t_max, t), t
