"""Gaussian random-walk Metropolis, the gradient-free move (``kernel="rwm"``), and the named kernels."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import blackjax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm

from inference.mcmc import langevin


def _rwm(logdensity_fn: Callable, step_size: float, inverse_mass_matrix: Any = None) -> SamplingAlgorithm:
    """Random-walk Metropolis with proposal ``N(x, 2 h M)`` (``M`` diagonal), like MALA without
    drift: BlackJAX's ``normal_random_walk`` with the scale the SMC sets at each stage."""
    scale = jnp.sqrt(2.0 * jnp.asarray(step_size))
    if inverse_mass_matrix is not None:
        scale = scale * jnp.sqrt(jnp.asarray(inverse_mass_matrix))
    return blackjax.normal_random_walk(logdensity_fn, scale)


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
