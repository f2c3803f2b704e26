"""Sample-quality metrics: how far a set of draws is from another set (or from the truth).

All three take two arrays of draws ``x`` (n, d) and ``y`` (m, d) and are jittable:

* :func:`energy_distance` -- ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo 2013),
  zero iff the laws are equal; the V-statistic (all pairs, diagonal included) or, with
  ``unbiased=True``, the U-statistic (diagonals excluded: unbiased, may be negative).
* :func:`mmd` -- squared maximum mean discrepancy with an RBF kernel (Gretton et al. 2012),
  bandwidth by the median heuristic on the pooled draws unless given.
* :func:`sliced_wasserstein` -- the average over random directions of the 1-D
  p-Wasserstein distance between the projections (Bonneel et al. 2015); equal sample sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["energy_distance", "mmd", "sliced_wasserstein"]


def _as_2d(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected draws of shape (n, d) with n >= 2; got {x.shape}.")
    return x


def _check_dims(fn: str, x: jax.Array, y: jax.Array) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{fn}: x has dimension {x.shape[1]} but y has {y.shape[1]}.")


def _pairwise_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    sq = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
    # sqrt has an infinite derivative at 0; keep gradients finite on the diagonal.
    sq = jnp.maximum(sq, 0.0)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def _mean_offdiag(k: jax.Array) -> jax.Array:
    n = k.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))


def energy_distance(x, y, unbiased: bool = False) -> jax.Array:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two sets of draws.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[0.0], [2.0]]); y = jnp.array([[1.0], [3.0]])
        >>> float(energy_distance(x, y))  # 2 * 1.5 - 1.0 - 1.0 (V-statistic, all pairs)
        1.0
    """
    x, y = _as_2d("energy_distance", x), _as_2d("energy_distance", y)
    _check_dims("energy_distance", x, y)
    dxy = jnp.mean(_pairwise_distances(x, y))
    dxx, dyy = _pairwise_distances(x, x), _pairwise_distances(y, y)
    if unbiased:
        return 2.0 * dxy - _mean_offdiag(dxx) - _mean_offdiag(dyy)
    return 2.0 * dxy - jnp.mean(dxx) - jnp.mean(dyy)


def mmd(x, y, bandwidth: float | None = None, unbiased: bool = True) -> jax.Array:
    """Squared MMD with the RBF kernel ``exp(-|a - b|^2 / (2 bandwidth^2))``.

    ``bandwidth=None``: the median of the pooled pairwise distances (the median heuristic).
    The unbiased U-statistic by default (its expectation is exactly the population MMD^2;
    it can be slightly negative when the laws are equal).

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[0.0], [1.0]]); y = jnp.array([[0.0], [1.0]])
        >>> round(float(mmd(x, y, bandwidth=1.0, unbiased=False)), 6)  # same draws
        0.0
    """
    x, y = _as_2d("mmd", x), _as_2d("mmd", y)
    _check_dims("mmd", x, y)
    if bandwidth is None:
        z = jnp.concatenate([x, y])
        d = _pairwise_distances(z, z)
        n = z.shape[0]
        bandwidth = jnp.median(d[jnp.triu_indices(n, 1)])
    gamma = 1.0 / (2.0 * jnp.asarray(bandwidth) ** 2)
    k = lambda a, b: jnp.exp(-gamma * _pairwise_distances(a, b) ** 2)  # noqa: E731
    kxy = jnp.mean(k(x, y))
    if unbiased:
        return _mean_offdiag(k(x, x)) + _mean_offdiag(k(y, y)) - 2.0 * kxy
    return jnp.mean(k(x, x)) + jnp.mean(k(y, y)) - 2.0 * kxy


def sliced_wasserstein(x, y, key: jax.Array, num_projections: int = 128, p: int = 2) -> jax.Array:
    """Sliced p-Wasserstein distance: ``(E_theta W_p^p(theta.X, theta.Y))^(1/p)``.

    Directions are uniform on the sphere (drawn from ``key``); each 1-D distance compares
    sorted projections, so ``x`` and ``y`` need the same number of draws.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(0), (500, 2))
        >>> round(float(sliced_wasserstein(x, x + jnp.array([3.0, 0.0]), jax.random.key(1),
        ...                                 num_projections=2000)), 1)  # E|3 cos t|^2 ^ 1/2
        2.1
    """
    x, y = _as_2d("sliced_wasserstein", x), _as_2d("sliced_wasserstein", y)
    _check_dims("sliced_wasserstein", x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_wasserstein: x has {x.shape[0]} draws but y has {y.shape[0]}; "
                         "subsample one of them to equal sizes.")
    theta = jax.random.normal(key, (num_projections, x.shape[1]), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    px, py = jnp.sort(x @ theta.T, axis=0), jnp.sort(y @ theta.T, axis=0)
    return jnp.mean(jnp.abs(px - py) ** p) ** (1.0 / p)
