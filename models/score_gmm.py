"""A Gaussian-mixture data distribution whose noised score is known in closed form.

If ``x0 ~ sum_k w_k N(mu_k, S_k)`` and ``x_t = a(t) x0 + s(t) eps`` (any forward process of
:mod:`inference.score`: VP, VE, linear interpolant), then ``x_t`` is again a mixture,
``sum_k w_k N(a mu_k, a^2 S_k + s^2 I)``, so its score ``grad log p_t`` and the exact
denoiser ``E[x0 | x_t]`` are closed-form. That makes the mixture the reference target for
the score samplers' tests and benchmarks: run a sampler with :meth:`GaussianMixture.score_fn`
and compare its draws with :meth:`GaussianMixture.sample`.

Processes are duck-typed here (anything with ``marginal(t) -> (mean_scale, std)``) so that
``models`` does not import ``inference``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from inference.score import VP
    >>> gmm = two_moons_mixture()
    >>> x = gmm.sample(jax.random.key(0), 4)
    >>> gmm.score(x, 0.5, VP()).shape
    (4, 2)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

__all__ = ["GaussianMixture", "two_moons_mixture", "ring_mixture"]

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture(eqx.Module):
    """``sum_k weights[k] N(means[k], covs[k])`` in ``d`` dimensions.

    Attributes:
        weights: (K,) mixture weights (normalised on construction).
        means: (K, d) component means.
        covs: (K, d, d) component covariances (symmetric positive definite).

    Example:
        >>> import jax.numpy as jnp
        >>> g = GaussianMixture(jnp.array([1.0, 1.0]), jnp.array([[-1.0], [1.0]]),
        ...                     jnp.ones((2, 1, 1)) * 0.25)
        >>> float(g.mean()[0]), round(float(g.covariance()[0, 0]), 3)  # 1 + 0.25
        (0.0, 1.25)
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    def __init__(self, weights, means, covs):
        weights = jnp.asarray(weights, jnp.float32)
        means = jnp.asarray(means, jnp.float32)
        covs = jnp.asarray(covs, jnp.float32)
        if means.ndim != 2:
            raise ValueError(f"GaussianMixture: means must have shape (K, d); got {means.shape}.")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"GaussianMixture: weights must have shape ({k},); got {weights.shape}.")
        if covs.shape != (k, d, d):
            raise ValueError(f"GaussianMixture: covs must have shape ({k}, {d}, {d}); got {covs.shape}.")
        self.weights = weights / jnp.sum(weights)
        self.means = means
        self.covs = covs

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- the data law ----------------------------------------------------------------
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact draws, shape ``(n, d)``."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(kz, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log density at ``x`` of shape ``(..., d)``."""
        return _mixture_log_prob(self.weights, self.means, self.covs, x)

    def mean(self) -> jax.Array:
        return self.weights @ self.means

    def covariance(self) -> jax.Array:
        m = self.mean()
        dev = self.means - m
        return jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, dev, dev)

    # -- the noised law --------------------------------------------------------------
    def noised(self, process: Any, t) -> "GaussianMixture":
        """The law of ``x_t = a(t) x0 + s(t) eps``: again a Gaussian mixture."""
        a, s = process.marginal(jnp.asarray(t, jnp.float32))
        eye = jnp.eye(self.dim)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def score(self, x: jax.Array, t, process: Any) -> jax.Array:
        """``grad_x log p_t(x)`` for ``x`` of shape ``(..., d)``, ``t`` a scalar."""
        g = self.noised(process, t)
        return jax.grad(lambda y: jnp.sum(g.log_prob(y)))(x)

    def denoiser(self, x: jax.Array, t, process: Any) -> jax.Array:
        """``E[x0 | x_t = x]`` (Tweedie: ``(x + s^2 score) / a``)."""
        a, s = process.marginal(jnp.asarray(t, jnp.float32))
        return (x + s**2 * self.score(x, t, process)) / a

    def score_fn(self, process: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """``fn(x, t)`` = the exact noised score, for the samplers (batched ``x``)."""
        return _ExactScore(self, process)

    # -- conditioning ----------------------------------------------------------------
    def posterior(self, A, y, noise_cov) -> "GaussianMixture":
        """The exact posterior of ``x`` given ``y = A x + N(0, noise_cov)``: a mixture.

        Example:
            >>> import jax.numpy as jnp
            >>> g = GaussianMixture(jnp.ones(1), jnp.zeros((1, 1)), jnp.ones((1, 1, 1)))
            >>> p = g.posterior(jnp.ones((1, 1)), jnp.array([2.0]), jnp.ones((1, 1)))
            >>> float(p.means[0, 0]), float(p.covs[0, 0, 0])  # conjugate normal
            (1.0, 0.5)
        """
        A = jnp.atleast_2d(jnp.asarray(A, jnp.float32))
        y = jnp.atleast_1d(jnp.asarray(y, jnp.float32))
        R = jnp.atleast_2d(jnp.asarray(noise_cov, jnp.float32))
        if A.shape[1] != self.dim or A.shape[0] != y.shape[0] or R.shape != (y.shape[0],) * 2:
            raise ValueError(f"GaussianMixture.posterior: A {A.shape}, y {y.shape}, noise_cov "
                             f"{R.shape} do not fit dimension {self.dim}.")
        S = jnp.einsum("ij,kjl,ml->kim", A, self.covs, A) + R  # (K, m, m)
        gain = jnp.einsum("kij,lj,klm->kim", self.covs, A, jnp.linalg.inv(S))  # (K, d, m)
        resid = y - self.means @ A.T  # (K, m)
        means = self.means + jnp.einsum("kim,km->ki", gain, resid)
        covs = self.covs - jnp.einsum("kim,mj,kjl->kil", gain, A, self.covs)
        covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2))
        log_w = jnp.log(self.weights) + jax.vmap(
            lambda r, s: _gauss_log_prob(r, jnp.zeros_like(r), s))(resid, S)
        return GaussianMixture(jnp.exp(log_w - logsumexp(log_w)), means, covs)


class _ExactScore(eqx.Module):
    gmm: GaussianMixture
    process: Any

    def __call__(self, x, t):
        return self.gmm.score(x, t, self.process)


def _gauss_log_prob(x, mean, cov):
    d = mean.shape[-1]
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, (x - mean)[..., None], lower=True)[..., 0]
    return -0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * d * _LOG_2PI


def _mixture_log_prob(weights, means, covs, x):
    x = jnp.asarray(x)
    comp = jax.vmap(lambda m, c: _gauss_log_prob(x, m, c), out_axes=-1)(means, covs)
    return logsumexp(comp + jnp.log(weights), axis=-1)


def two_moons_mixture() -> GaussianMixture:
    """The benchmark's 2-D mixture: 6 anisotropic components of unequal weight, two arcs.

    Well separated modes (a few component sds apart), correlations, weights from 0.1 to
    0.25: hard enough that few-step samplers visibly blur it.
    """
    angles = jnp.array([0.0, 0.5, 1.0]) * math.pi
    upper = jnp.stack([jnp.cos(angles), jnp.sin(angles)], 1) * 1.5 + jnp.array([-0.6, -0.3])
    lower = jnp.stack([jnp.cos(angles), -jnp.sin(angles)], 1) * 1.5 + jnp.array([0.6, 0.3])
    means = jnp.concatenate([upper, lower])
    tang = jnp.concatenate([angles, -angles]) + math.pi / 2
    u = jnp.stack([jnp.cos(tang), jnp.sin(tang)], 1)
    v = jnp.stack([-u[:, 1], u[:, 0]], 1)
    covs = 0.09 * jnp.einsum("ki,kj->kij", u, u) + 0.01 * jnp.einsum("ki,kj->kij", v, v)
    weights = jnp.array([0.25, 0.1, 0.15, 0.2, 0.1, 0.2])
    return GaussianMixture(weights, means, covs)


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.2, dim: int = 2) -> GaussianMixture:
    """``k`` equal isotropic components on a circle (in the first two of ``dim`` axes).

    Example:
        >>> ring_mixture(4).means.shape
        (4, 2)
    """
    if k < 1 or dim < 2:
        raise ValueError(f"ring_mixture(k={k}, dim={dim}): need k >= 1 and dim >= 2.")
    ang = jnp.arange(k) * 2 * math.pi / k
    means = jnp.zeros((k, dim)).at[:, 0].set(radius * jnp.cos(ang)).at[:, 1].set(radius * jnp.sin(ang))
    return GaussianMixture(jnp.ones(k), means, jnp.broadcast_to(std**2 * jnp.eye(dim), (k, dim, dim)))
