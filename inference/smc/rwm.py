"""Gaussian random-walk Metropolis, the gradient-free move (``kernel="rwm"``), and the named kernels."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree

from inference import langevin


class _RWMState(NamedTuple):
    position: Any
    logdensity: jax.Array


class _RWMInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    n_grad: jax.Array


def _rwm(logdensity_fn: Callable, step_size: float, inverse_mass_matrix: Any = None) -> SamplingAlgorithm:
    """Random-walk Metropolis with proposal ``N(x, 2 h M)`` (``M`` diagonal), like MALA without drift."""

    def init(position, rng_key=None):
        del rng_key
        return _RWMState(position, logdensity_fn(position))

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        k_prop, k_acc = jax.random.split(rng_key)
        scale = jnp.sqrt(2.0 * step_size)
        if inverse_mass_matrix is not None:
            scale = scale * jnp.sqrt(jnp.asarray(inverse_mass_matrix))
        y = unravel(x + scale * jax.random.normal(k_prop, x.shape, x.dtype))
        logdensity_y = logdensity_fn(y)
        log_ratio = logdensity_y - state.logdensity
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
        is_accepted = jnp.log(jax.random.uniform(k_acc, dtype=acceptance_rate.dtype)) < log_ratio
        new = jax.tree.map(lambda a, b: jnp.where(is_accepted, a, b), _RWMState(y, logdensity_y), state)
        return new, _RWMInfo(acceptance_rate, is_accepted, jnp.asarray(0, jnp.int32))

    return SamplingAlgorithm(init, step)


class _KernelSpec(NamedTuple):
    factory: Callable
    target_acceptance: float | None
    init_step_size: Callable[[int], float]  # dimension -> initial (relative) step size


#: Kernels by name: factory ``(logdensity_fn, step_size, inverse_mass_matrix)``, the
#: acceptance rate the step-size controller aims at, and the initial relative step size
#: as a function of the dimension ``d`` (MALA's optimal scaling is ``d^{-1/3}``, random
#: walk's ``d^{-1}``: Roberts & Rosenthal 1998, 2001).
KERNELS: dict[str, _KernelSpec] = {
    "mala": _KernelSpec(langevin.mala, 0.574, lambda d: float(d) ** (-1.0 / 3.0)),
    "ula": _KernelSpec(langevin.ula, None, lambda d: 0.05),
    "rwm": _KernelSpec(_rwm, 0.234, lambda d: 2.83 / float(d)),
}
