"""Step-size and mass-matrix tuning for gradient-based kernels that follow BlackJAX's protocol.

Two tools, both pure functions of a key that can be jit-compiled and ``vmap``-ed over chains:

* :func:`window_adaptation` -- for kernels with a Metropolis correction (MALA, OBABO).
  Stan's windowed warmup (Carpenter et al. 2017, *Stan reference manual*, "HMC algorithm
  parameters"): the step size follows Nesterov dual averaging towards a target acceptance
  rate (Hoffman & Gelman 2014, section 3.2; BlackJAX's ``dual_averaging_adaptation``), and
  a diagonal or dense inverse mass matrix is re-estimated by Welford's algorithm at the end
  of each slow window (BlackJAX's ``mass_matrix_adaptation``), shrunk towards a scaled
  diagonal rather than Stan's ``1e-3 I`` (see ``_scaled_mass_matrix_final``), and the step
  size is re-initialised for the new mass matrix as Stan does.
* :func:`max_curvature` and :func:`unadjusted_step_size` -- for kernels without one (ULA,
  BAOAB, randomized midpoint), where the acceptance rate does not exist and the step size
  sets the bias instead. The rule picks the step size from the largest eigenvalue ``L`` of
  the preconditioned Hessian ``S^T (-grad^2 log p) S`` (``S S^T`` the inverse mass matrix)
  so that, on any Gaussian target, the stationary variance is off by at most a relative
  ``tolerance`` in every direction:

  - ULA (Euler-Maruyama, ``x' = x + h M g + sqrt(2h) M^{1/2} xi``) on a Gaussian whose
    preconditioned covariance has eigenvalue ``lam`` has stationary variance
    ``lam / (1 - h / (2 lam))``: relative error ``(h/(2 lam)) / (1 - h/(2 lam))``, largest
    along the stiffest direction ``lam = 1/L``. ``h = (2 tol / (1 + tol)) / L`` makes it
    exactly ``tol`` there (Roberts & Tweedie 1996; Durmus & Moulines 2017).
  - BAOAB (Leimkuhler & Matthews 2013) samples the positions of a Gaussian exactly for any
    stable ``h`` (``h^2 L < 4``); its momenta have variance ``1 - h^2 / (4 lam)`` (in units
    of the mass). ``h = 2 sqrt(tol / (1 + tol)) / sqrt(L)`` bounds that error by
    ``tol / (1 + tol) < tol``, and keeps ``h`` well inside the stability limit
    ``2 / sqrt(L)``.

  ``L`` comes from power iteration with Hessian-vector products (forward-over-reverse
  autodiff), so no Hessian is formed.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import (
    MassMatrixAdaptationState,
    mass_matrix_adaptation,
    welford_algorithm,
)
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule
from jax.flatten_util import ravel_pytree


class _Warmup(NamedTuple):
    da: Any  # dual-averaging state
    mm: Any  # Welford mass-matrix state
    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    acceptance_sum: jax.Array
    n_grad: jax.Array  # gradient evaluations so far (steps, step-size searches, init)


def _scaled_mass_matrix_final(diagonal: bool) -> Callable:
    """End of a slow window: the inverse mass matrix, shrunk towards a *scaled* diagonal.

    Stan (and BlackJAX) regularise the window's covariance ``C`` (``n`` draws) as
    ``n/(n+5) C + 5/(n+5) 1e-3 I``. The identity target assumes unit-scale posteriors: on
    posteriordb's ``sblrc-blr`` the coefficients have sds ~1e-3 (variances 1e-6), so the
    ``1e-5`` identity term swamps their correlated covariance and a one-gradient kernel
    (MALA, OBABO) stops mixing, while NUTS's long trajectories hide it. We shrink towards
    ``1e-3 diag(C)`` instead (plus a 1e-10 floor), which keeps each coordinate's scale.
    """
    wc_init, _, wc_final = welford_algorithm(diagonal)

    def final(mm: MassMatrixAdaptationState) -> MassMatrixAdaptationState:
        covariance, count, _ = wc_final(mm.wc_state)
        w = 5.0 / (count + 5.0)
        scale = covariance if diagonal else jnp.diag(covariance)
        target = 1e-3 * jnp.maximum(scale, 0.0) + 1e-10
        imm = (1.0 - w) * covariance + w * (target if diagonal else jnp.diag(target))
        return MassMatrixAdaptationState(imm, wc_init(scale.shape[-1]))

    return final


def window_adaptation(
    kernel_factory: Callable,
    logdensity_fn: Callable,
    position: Any,
    key: jax.Array,
    num_steps: int,
    *,
    target: float,
    initial_step_size: float = 0.1,
    dense_mass: bool = False,
    **kernel_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Stan-style warmup of an adjusted kernel: dual-averaged step size, windowed mass matrix.

    ``kernel_factory(logdensity_fn, step_size=..., inverse_mass_matrix=..., **kernel_kwargs)``
    must return a BlackJAX ``SamplingAlgorithm`` whose ``info`` has ``acceptance_rate`` and
    whose ``init`` takes ``(position, rng_key)``. Runs ``num_steps`` transitions of one chain
    (``jax.vmap`` this function for several) and returns ``(state, params)``: the last state
    and ``{"step_size", "inverse_mass_matrix", **kernel_kwargs}``, so that
    ``kernel_factory(logdensity_fn, **params)`` is the tuned kernel. ``params`` also holds
    ``"mean_acceptance_rate"`` (over the warmup) under the key ``"warmup_acceptance_rate"``
    and the gradient evaluations the warmup made under ``"warmup_n_grad"`` (the initial
    state's gradient, every transition's ``info.n_grad``, and every trial transition of
    the step-size searches at the start and at the end of each window) -- pop them before
    passing ``params`` on, or use :func:`kernel_params`.

    The step size after the last warmup step is dual averaging's averaged iterate (Stan's
    rule); with fewer than 20 steps only the step size is adapted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.mcmc import langevin
        >>> logdensity = lambda x: -0.5 * jnp.sum(x**2 / jnp.array([1.0, 4.0]))
        >>> state, params = window_adaptation(langevin.mala, logdensity, jnp.zeros(2),
        ...                                   jax.random.key(0), 200, target=0.57)
        >>> sorted(kernel_params(params))
        ['inverse_mass_matrix', 'step_size']
    """
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"window_adaptation(target={target}): must be in (0, 1).")
    if not float(initial_step_size) > 0.0:
        raise ValueError(f"window_adaptation(initial_step_size={initial_step_size}): must be > 0.")
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"window_adaptation(num_steps={num_steps}): must be >= 1.")
    dim = ravel_pytree(position)[0].size
    mm_init, mm_update, _ = mass_matrix_adaptation(not dense_mass)
    mm_final = _scaled_mass_matrix_final(not dense_mass)
    da_init, da_update, da_final = dual_averaging_adaptation(target)
    with jax.ensure_compile_time_eval():  # a static schedule, also when called under jit
        schedule = np.asarray(build_schedule(num_steps)) if num_steps >= 20 else np.zeros((num_steps, 2))
    stage = jnp.asarray(schedule[:, 0].astype(np.int32))
    window_end = jnp.asarray(schedule[:, 1].astype(bool))
    W = num_steps

    def make(step_size, imm):
        return kernel_factory(logdensity_fn, step_size=step_size, inverse_mass_matrix=imm,
                              **kernel_kwargs)

    def acceptance(state, step_size, imm, key):
        info = make(step_size, imm).step(key, state)[1]
        return jnp.nan_to_num(info.acceptance_rate), jnp.asarray(info.n_grad, jnp.int32)

    def reasonable(state, step_size, imm, key):
        """Stan's step-size re-initialisation: double (or halve) the step size until one
        transition's acceptance rate crosses ``target``. Dual averaging then starts from a
        step size that fits the current mass matrix and position, which keeps a chain that
        starts in the tails (large gradients) from collapsing its step size for good.
        Returns the step size and the gradients its trial transitions took."""
        a0, n0 = acceptance(state, step_size, imm, key)
        factor = jnp.where(a0 > target, 2.0, 0.5)

        def cond(c):
            h, a, i, _ = c
            return (i < 10) & jnp.where(factor > 1.0, a > target, a < target)

        def body(c):
            h, _, i, n = c
            h = h * factor
            a, m = acceptance(state, h, imm, key)
            return h, a, i + 1, n + m

        h, _, _, n = jax.lax.while_loop(cond, body, (step_size, a0, 0, n0))
        return h, n

    def body(carry, xs):
        state, w = carry
        t, k = xs
        k_step, k_search = jax.random.split(k)
        state, info = make(w.step_size, w.inverse_mass_matrix).step(k_step, state)
        acc = jnp.nan_to_num(info.acceptance_rate)
        da = da_update(w.da, acc)
        mm = jax.lax.cond(stage[t] == 1, lambda m: mm_update(m, state.position), lambda m: m, w.mm)

        def end_window(da, mm):
            mm = mm_final(mm)
            h, n = reasonable(state, da_final(da), mm.inverse_mass_matrix, k_search)
            return da_init(h), mm, n

        def same(da, mm):
            return da, mm, jnp.zeros((), jnp.int32)

        da, mm, n_search = jax.lax.cond(window_end[t], end_window, same, da, mm)
        step_size = jnp.where(t == W - 1, da_final(da), jnp.exp(da.log_step_size))
        n_grad = w.n_grad + jnp.asarray(info.n_grad, jnp.int32) + n_search
        return (state, _Warmup(da, mm, step_size, mm.inverse_mass_matrix,
                               w.acceptance_sum + acc, n_grad)), None

    init_key, search_key, key = jax.random.split(key, 3)
    mm0 = mm_init(dim)
    step0 = jnp.asarray(initial_step_size, dtype=jnp.result_type(float))
    state = make(step0, mm0.inverse_mass_matrix).init(position, init_key)  # one gradient
    step0, n_search = reasonable(state, step0, mm0.inverse_mass_matrix, search_key)
    w = _Warmup(da_init(step0), mm0, step0, mm0.inverse_mass_matrix, jnp.zeros((), step0.dtype),
                1 + n_search)
    (state, w), _ = jax.lax.scan(body, (state, w), (jnp.arange(W), jax.random.split(key, W)))
    params = {"step_size": w.step_size, "inverse_mass_matrix": w.inverse_mass_matrix,
              **kernel_kwargs, "warmup_acceptance_rate": w.acceptance_sum / W,
              "warmup_n_grad": w.n_grad}
    return state, params


def kernel_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the diagnostics that adaptation adds (keys starting ``warmup_``)."""
    return {k: v for k, v in params.items() if not k.startswith("warmup_")}


def _sqrt_factors(inverse_mass_matrix: jax.Array | None) -> tuple[Callable, Callable]:
    """``(v -> S v, v -> S^T v)`` with ``S S^T`` the inverse mass matrix (identity if None)."""
    if inverse_mass_matrix is None:
        return (lambda v: v), (lambda v: v)
    imm = jnp.asarray(inverse_mass_matrix)
    if imm.ndim == 1:
        s = jnp.sqrt(imm)
        return (lambda v: s * v), (lambda v: s * v)
    chol = jnp.linalg.cholesky(imm)
    return (lambda v: chol @ v), (lambda v: chol.T @ v)


def max_curvature(
    logdensity_fn: Callable,
    position: Any,
    key: jax.Array,
    inverse_mass_matrix: jax.Array | None = None,
    num_iterations: int = 30,
) -> jax.Array:
    """Largest |eigenvalue| of the preconditioned Hessian ``S^T (-grad^2 log p)(x) S``.

    Power iteration with Hessian-vector products (``jax.jvp`` of ``jax.grad``):
    ``num_iterations + 1`` of them (:func:`curvature_n_grad` counts their cost in
    gradients), no ``d x d`` Hessian. For a Gaussian
    target this is ``1 / lam_min`` of the preconditioned covariance, whatever ``x`` is.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logdensity = lambda x: -0.5 * jnp.sum(x**2 / jnp.array([1.0, 0.25]))
        >>> round(float(max_curvature(logdensity, jnp.ones(2), jax.random.key(0))), 3)
        4.0
    """
    flat, unravel = ravel_pytree(position)
    S, ST = _sqrt_factors(inverse_mass_matrix)
    grad_flat = lambda x: ravel_pytree(jax.grad(logdensity_fn)(unravel(x)))[0]  # noqa: E731

    def hvp(v):  # S^T (-H) S v: the Hessian in y, where x = S y
        return -ST(jax.jvp(grad_flat, (flat,), (S(v),))[1])

    def body(v, _):
        w = hvp(v)
        return w / (jnp.linalg.norm(w) + 1e-30), None

    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    v, _ = jax.lax.scan(body, v0 / jnp.linalg.norm(v0), None, length=num_iterations)
    return jnp.abs(jnp.vdot(v, hvp(v)))


def curvature_n_grad(num_iterations: int = 30) -> int:
    """The gradient evaluations :func:`max_curvature` costs, as counted in ``n_grad``.

    It makes ``num_iterations + 1`` Hessian-vector products; each is a forward-mode
    derivative of the gradient, which evaluates the gradient and its tangent, and counts as
    two gradients (about its cost).

    Example:
        >>> curvature_n_grad(30)
        62
    """
    return 2 * (int(num_iterations) + 1)


def unadjusted_step_size(curvature: jax.Array, tolerance: float, kind: str) -> jax.Array:
    """The step size that bounds the stationary variance error on Gaussians by ``tolerance``.

    ``kind="ula"``: ``h = (2 tol / (1 + tol)) / L`` -- ULA's relative variance error along
    the stiffest direction is then exactly ``tol`` (smaller elsewhere).
    ``kind="underdamped"`` (BAOAB, also used for the randomized midpoint kernel):
    ``h = 2 sqrt(tol / (1 + tol)) / sqrt(L)`` -- BAOAB's positions are exact on Gaussians
    and its momentum variance is off by ``h^2 L / 4 = tol / (1 + tol)``.

    Example:
        >>> float(unadjusted_step_size(1.0, 0.05, "ula"))  # doctest: +ELLIPSIS
        0.0952...
    """
    tol = float(tolerance)
    if not tol > 0.0:
        raise ValueError(f"unadjusted_step_size(tolerance={tolerance}): must be > 0.")
    if kind == "ula":
        return (2.0 * tol / (1.0 + tol)) / curvature
    if kind == "underdamped":
        return 2.0 * np.sqrt(tol / (1.0 + tol)) / jnp.sqrt(curvature)
    raise ValueError(f"unadjusted_step_size(kind={kind!r}): expected 'ula' or 'underdamped'.")
