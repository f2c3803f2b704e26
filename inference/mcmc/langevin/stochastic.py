"""Stochastic-gradient Langevin kernels (SGLD, SGHMC) and the minibatch gradient estimator."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree


from inference.mcmc.langevin.common import _Metric, _as_int, _check_positive, _concrete
from inference.mcmc.langevin.states import SGHMCState, SGInfo, SGLDState


def minibatch_grad_estimator(
    loglik_fn: Callable,
    data: Any,
    batch_size: int,
    logprior_fn: Callable | None = None,
) -> Callable:
    r"""``(position, key) -> `` unbiased estimate of ``grad [log prior + sum_i log lik_i]``.

    ``loglik_fn(position, datum)`` is the log likelihood of one datum; ``data`` is a pytree
    whose leaves share a leading axis of length ``N``. Each call draws ``batch_size``
    distinct indices uniformly (without replacement) and returns
    ``grad log prior + (N / n) sum_{i in batch} grad log lik_i`` (Welling & Teh 2011).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> est = minibatch_grad_estimator(lambda m, y: -0.5 * (y - m) ** 2, jnp.arange(10.0), 10)
        >>> float(est(jnp.array(0.0), jax.random.key(0)))  # full batch: sum(y - m)
        45.0
    """
    n_data = jax.tree.leaves(data)[0].shape[0]
    n = int(batch_size)
    if not 1 <= n <= n_data:
        raise ValueError(f"minibatch_grad_estimator(batch_size={batch_size}): must be in [1, {n_data}].")
    scale = n_data / n

    def objective(position, batch):
        total = scale * jnp.sum(jax.vmap(loglik_fn, in_axes=(None, 0))(position, batch))
        return total if logprior_fn is None else total + logprior_fn(position)

    def estimate(position, key):
        idx = jax.random.choice(key, n_data, (n,), replace=False)
        batch = jax.tree.map(lambda d: d[idx], data)
        return jax.grad(objective)(position, batch)

    return estimate


def sgld(grad_estimator: Callable, step_size: float, inverse_mass_matrix: Any = None) -> SamplingAlgorithm:
    r"""Stochastic-gradient Langevin dynamics (Welling & Teh, ICML 2011).

    ULA with an unbiased gradient estimate ``G(x, key)``:
    ``x' = x + h M G(x) + sqrt(2h) M^{1/2} xi``. ``grad_estimator(position, key)`` returns a
    pytree like ``position`` (see :func:`minibatch_grad_estimator`). On ``N(0, s^2)`` with
    estimator noise of variance ``sigma^2`` independent of ``x`` the stationary variance is
    ``s^2 (1 + h sigma^2 / 2) / (1 - h / (2 s^2))``: the gradient noise adds an
    ``O(h sigma^2)`` error on top of ULA's. One gradient estimate per step (``n_grad=1``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = sgld(lambda x, key: -x, step_size=0.1)
        >>> state, info = alg.step(jax.random.key(0), alg.init(jnp.ones(2)))
        >>> int(info.n_grad)
        1
    """
    _check_positive("sgld", "step_size", step_size)

    def init(position, rng_key=None):
        del rng_key
        return SGLDState(position)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        metric = _Metric.make("sgld", inverse_mass_matrix, x.size)
        k_grad, k_noise = jax.random.split(rng_key)
        g = ravel_pytree(grad_estimator(state.position, k_grad))[0]
        xi = jax.random.normal(k_noise, x.shape, x.dtype)
        y = x + step_size * metric.mul(g) + jnp.sqrt(2.0 * step_size) * metric.sqrt_mul(xi)
        return SGLDState(unravel(y)), SGInfo(_as_int(1))

    return SamplingAlgorithm(init, step)


def sghmc(
    grad_estimator: Callable,
    step_size: float,
    friction: float = 1.0,
    inverse_mass_matrix: Any = None,
) -> SamplingAlgorithm:
    r"""Stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin, ICML 2014).

    Euler discretisation of kinetic Langevin dynamics with a gradient estimate ``G``:

    .. math::  p' = (1 - \gamma h)\,p + h\,G(x) + \sqrt{2\gamma h}\,M^{-1/2}\xi,\qquad
               x' = x + h\,M p'.

    With ``v = h M p``, learning rate ``eta = h^2`` and ``alpha = gamma h`` this is eq. (15)
    of Chen et al. (with their noise-estimate ``beta_hat = 0``). Requires ``gamma h < 1``.
    On ``N(0, s^2)`` with exact gradients the stationary position variance is
    ``s^2 / (1 - h^2 / (2 s^2 (2 - gamma h)))`` -- the test checks it by solving the
    chain's discrete Lyapunov equation. One gradient estimate per step.
    ``init(position, rng_key)`` draws the momentum (zero without a key).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = sghmc(lambda x, key: -x, step_size=0.1, friction=1.0)
        >>> state, info = alg.step(jax.random.key(0), alg.init(jnp.ones(2), jax.random.key(1)))
        >>> state.momentum.shape, int(info.n_grad)
        ((2,), 1)
    """
    _check_positive("sghmc", "step_size", step_size)
    _check_positive("sghmc", "friction", friction)
    gh = _concrete(friction * step_size) if _concrete(friction) is not None else None
    if gh is not None and not gh < 1.0:
        raise ValueError(f"langevin.sghmc: friction * step_size = {gh}; must be < 1.")

    def init(position, rng_key=None):
        x, unravel = ravel_pytree(position)
        if rng_key is None:
            return SGHMCState(position, unravel(jnp.zeros_like(x)))
        metric = _Metric.make("sghmc", inverse_mass_matrix, x.size)
        p = metric.inv_sqrt_mul(jax.random.normal(rng_key, x.shape, x.dtype))
        return SGHMCState(position, unravel(p))

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        p = ravel_pytree(state.momentum)[0]
        metric = _Metric.make("sghmc", inverse_mass_matrix, x.size)
        k_grad, k_noise = jax.random.split(rng_key)
        g = ravel_pytree(grad_estimator(state.position, k_grad))[0]
        xi = jax.random.normal(k_noise, x.shape, x.dtype)
        p = (1.0 - friction * step_size) * p + step_size * g + jnp.sqrt(
            2.0 * friction * step_size) * metric.inv_sqrt_mul(xi)
        x = x + step_size * metric.mul(p)
        return SGHMCState(unravel(x), unravel(p)), SGInfo(_as_int(1))

    return SamplingAlgorithm(init, step)
