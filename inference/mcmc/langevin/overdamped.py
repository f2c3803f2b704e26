"""Overdamped Langevin: ULA and MALA."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree


from inference.mcmc.langevin.common import _Metric, _as_int, _check_finite_init, _check_positive
from inference.mcmc.langevin.states import LangevinState, MALAInfo, ULAInfo


def _overdamped_init(kernel: str, logdensity_fn: Callable) -> Callable:
    def init(position, rng_key=None):
        del rng_key  # deterministic: the state is a function of the position
        logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
        _check_finite_init(kernel, logdensity)
        return LangevinState(position, logdensity, grad)

    return init


def ula(logdensity_fn: Callable, step_size: float, inverse_mass_matrix: Any = None) -> SamplingAlgorithm:
    r"""Unadjusted Langevin algorithm: the Euler-Maruyama step of the overdamped diffusion.

    .. math::  x' = x + h\,M \nabla\log p(x) + \sqrt{2h}\,M^{1/2}\xi, \qquad \xi\sim N(0, I).

    No accept step, so the chain is biased: on ``N(0, s^2)`` (``M = 1``) it is the AR(1)
    chain ``x' = (1 - h/s^2) x + sqrt(2h) xi`` with stationary variance
    ``s^2 / (1 - h / (2 s^2))`` -- a relative error ``h / (2 s^2) + O(h^2)``, first order
    in ``h`` (Roberts & Tweedie 1996, *Bernoulli* 2(4); Durmus & Moulines 2017, *Ann.
    Appl. Probab.* 27(3)). Stable for ``h < 2 s^2``. One gradient per step (``n_grad=1``).
    See :func:`adapt` for choosing ``h`` from a bias tolerance.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = ula(lambda x: -0.5 * jnp.sum(x["a"] ** 2), step_size=0.1)
        >>> state = alg.init({"a": jnp.zeros(3)})
        >>> state, info = jax.jit(alg.step)(jax.random.key(0), state)
        >>> state.position["a"].shape, int(info.n_grad)
        ((3,), 1)
    """
    _check_positive("ula", "step_size", step_size)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        g = ravel_pytree(state.logdensity_grad)[0]
        metric = _Metric.make("ula", inverse_mass_matrix, x.size)
        xi = jax.random.normal(rng_key, x.shape, x.dtype)
        y = x + step_size * metric.mul(g) + jnp.sqrt(2.0 * step_size) * metric.sqrt_mul(xi)
        logdensity, grad = jax.value_and_grad(logdensity_fn)(unravel(y))
        return LangevinState(unravel(y), logdensity, grad), ULAInfo(_as_int(1))

    return SamplingAlgorithm(_overdamped_init("ula", logdensity_fn), step)


def _accept(key, log_ratio):
    """Metropolis-Hastings decision; a NaN or +inf ratio (log p NaN or +inf at the proposal,
    or an overflowing energy) rejects."""
    log_ratio = jnp.where(jnp.isnan(log_ratio) | (log_ratio == jnp.inf), -jnp.inf, log_ratio)
    acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
    is_accepted = jnp.log(jax.random.uniform(key, dtype=acceptance_rate.dtype)) < log_ratio
    return acceptance_rate, is_accepted


def mala(logdensity_fn: Callable, step_size: float, inverse_mass_matrix: Any = None) -> SamplingAlgorithm:
    r"""Metropolis-adjusted Langevin algorithm, optionally preconditioned (diagonal or dense ``M``).

    Proposal ``y = x + h M g(x) + sqrt(2h) M^{1/2} xi``, i.e.
    ``q(y | x) = N(y; x + h M g(x), 2 h M)``, accepted with probability

    .. math::  \min\Big(1, \frac{p(y)\,q(x\mid y)}{p(x)\,q(y\mid x)}\Big),\qquad
               \log q(x\mid y) = -\tfrac{1}{4h}\,\lVert x - y - hMg(y)\rVert^2_{M^{-1}} + c.

    (Roberts & Tweedie 1996; Girolami & Calderhead 2011 for the constant preconditioner.)
    Exactly invariant for ``p``; the optimal acceptance rate in high dimension is about
    0.574 (Roberts & Rosenthal 1998). One gradient per step: the gradient at the proposal
    is needed for the reverse density and becomes the cached gradient if accepted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = mala(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5,
        ...            inverse_mass_matrix=jnp.array([1.0, 2.0]))
        >>> state, info = alg.step(jax.random.key(1), alg.init(jnp.zeros(2)))
        >>> int(info.n_grad), 0.0 <= float(info.acceptance_rate) <= 1.0
        (1, True)
    """
    _check_positive("mala", "step_size", step_size)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        gx = ravel_pytree(state.logdensity_grad)[0]
        metric = _Metric.make("mala", inverse_mass_matrix, x.size)
        k_prop, k_acc = jax.random.split(rng_key)
        xi = jax.random.normal(k_prop, x.shape, x.dtype)
        y = x + step_size * metric.mul(gx) + jnp.sqrt(2.0 * step_size) * metric.sqrt_mul(xi)
        logdensity_y, grad_y = jax.value_and_grad(logdensity_fn)(unravel(y))
        gy = ravel_pytree(grad_y)[0]
        log_q_forward = -0.5 * jnp.sum(xi * xi)  # (y - x - hMg(x)) = sqrt(2h) M^{1/2} xi
        log_q_reverse = -metric.inv_quad(x - y - step_size * metric.mul(gy)) / (4.0 * step_size)
        log_ratio = logdensity_y - state.logdensity + log_q_reverse - log_q_forward
        acceptance_rate, is_accepted = _accept(k_acc, log_ratio)
        proposal = LangevinState(unravel(y), logdensity_y, grad_y)
        new = jax.tree.map(lambda a, b: jnp.where(is_accepted, a, b), proposal, state)
        return new, MALAInfo(acceptance_rate, is_accepted, _as_int(1))

    return SamplingAlgorithm(_overdamped_init("mala", logdensity_fn), step)
