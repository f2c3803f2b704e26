"""Step-size and mass-matrix tuning of a Langevin kernel before sampling (:func:`adapt`)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from inference.mcmc import adaptation

from inference.mcmc.langevin.overdamped import mala
from inference.mcmc.langevin.underdamped import obabo, underdamped


_ADJUSTED_TARGET = {"mala": 0.574, "obabo": 0.75}
_UNADJUSTED_RULE = {"ula": "ula", "underdamped": "underdamped", "randomized_midpoint": "underdamped"}


def adapt(
    kernel_factory: Callable,
    logdensity_fn: Callable,
    position: Any,
    key: jax.Array,
    num_steps: int = 500,
    *,
    target: float | None = None,
    tolerance: float = 0.05,
    initial_step_size: float = 0.1,
    dense_mass: bool = False,
    num_curvature_points: int = 8,
    **kernel_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Warm up one chain and tune ``kernel_factory``'s step size (and inverse mass matrix).

    Returns ``(state, params)`` with ``kernel_factory(logdensity_fn, **params)`` the tuned
    kernel and ``state`` a state of it at the end of warmup. Pure and jittable for a static
    ``num_steps``; ``jax.vmap`` it over keys and positions for several chains.

    * Adjusted kernels (:func:`mala`, :func:`obabo`, ``underdamped(adjusted=True)``): Stan's
      windowed warmup with the kernel itself -- dual averaging of the step size to
      ``target`` (default 0.574 for MALA, 0.75 for OBABO) and a diagonal (or dense)
      inverse mass matrix from the slow windows (:func:`adaptation.window_adaptation`).
    * Unadjusted kernels (:func:`ula`, :func:`underdamped`, :func:`randomized_midpoint`):
      the same warmup with MALA provides the mass matrix and positions in the typical set;
      then the step size is set by the bias rule of :func:`adaptation.unadjusted_step_size`
      from the largest preconditioned curvature over ``num_curvature_points`` positions
      (``max(|eig(S^T (-Hess log p) S)|)``, ``S S^T = M``, power iteration). On a Gaussian the
      stationary variance is then within a relative ``tolerance`` in every direction
      (ULA: exactly ``tolerance`` along the stiffest; BAOAB: positions exact, momenta within
      ``tolerance``). ``params`` holds ``warmup_curvature``, ``warmup_acceptance_rate`` and
      ``warmup_mala_step_size`` (the MALA warmup's tuned step size) for diagnostics;
      :func:`adaptation.kernel_params` drops them.

    ``params["warmup_n_grad"]`` counts every gradient evaluation of the warmup: the
    transitions, the step-size searches, the initial state's gradient and, for unadjusted
    kernels, the extra MALA steps, the curvature estimates (a Hessian-vector product counts
    as two gradients, :func:`adaptation.curvature_n_grad`) and the tuned kernel's initial
    state.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logdensity = lambda x: -0.5 * jnp.sum(x**2 / jnp.array([1.0, 9.0]))
        >>> state, params = adapt(mala, logdensity, jnp.zeros(2), jax.random.key(0), 200)
        >>> alg = mala(logdensity, **adaptation.kernel_params(params))
        >>> state, info = alg.step(jax.random.key(1), state)
    """
    if kernel_factory is underdamped and kernel_kwargs.pop("adjusted", False):
        kernel_factory = obabo
    kernel_kwargs.pop("adjusted", None)
    name = getattr(kernel_factory, "__name__", "")
    if name in _ADJUSTED_TARGET:
        target = _ADJUSTED_TARGET[name] if target is None else target
        return adaptation.window_adaptation(
            kernel_factory, logdensity_fn, position, key, num_steps, target=target,
            initial_step_size=initial_step_size, dense_mass=dense_mass, **kernel_kwargs)
    if name not in _UNADJUSTED_RULE:
        raise ValueError(f"langevin.adapt: cannot tune {kernel_factory!r}; expected one of "
                         f"{sorted(_ADJUSTED_TARGET) + sorted(_UNADJUSTED_RULE)}.")
    k_warm, k_more, k_curv, k_init = jax.random.split(key, 4)
    state, params = adaptation.window_adaptation(
        mala, logdensity_fn, position, k_warm, num_steps,
        target=_ADJUSTED_TARGET["mala"] if target is None else target,
        initial_step_size=initial_step_size, dense_mass=dense_mass)
    imm = params["inverse_mass_matrix"]
    # A few more MALA steps give positions at which to measure the curvature.
    alg = mala(logdensity_fn, params["step_size"], imm)

    def more(state, k):
        state, _ = alg.step(k, state)
        return state, state.position

    state, positions = jax.lax.scan(more, state, jax.random.split(k_more, num_curvature_points))
    curvatures = jax.vmap(lambda x, k: adaptation.max_curvature(logdensity_fn, x, k, imm))(
        positions, jax.random.split(k_curv, num_curvature_points))
    curvature = jnp.max(curvatures)
    step_size = adaptation.unadjusted_step_size(curvature, tolerance, _UNADJUSTED_RULE[name])
    out = {"step_size": step_size, "inverse_mass_matrix": imm, **kernel_kwargs}
    new_state = kernel_factory(logdensity_fn, **out).init(state.position, k_init)
    # Gradients: MALA's warmup, the extra MALA steps (one each), the curvature power
    # iterations, and the new kernel's initial state.
    n_grad = (params["warmup_n_grad"] + num_curvature_points
              + num_curvature_points * adaptation.curvature_n_grad() + 1)
    out.update(warmup_curvature=curvature, warmup_acceptance_rate=params["warmup_acceptance_rate"],
               warmup_mala_step_size=params["step_size"], warmup_n_grad=n_grad)
    return new_state, out
