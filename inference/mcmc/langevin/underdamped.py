"""Underdamped (kinetic) Langevin: BAOAB, OBABO (GHMC) and the randomized midpoint method."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree


from inference.mcmc.langevin.common import _Metric, _as_int, _check_finite_init, _check_positive
from inference.mcmc.langevin.overdamped import _accept
from inference.mcmc.langevin.states import OBABOInfo, UnderdampedInfo, UnderdampedState


def _underdamped_init(kernel: str, logdensity_fn: Callable, inverse_mass_matrix: Any) -> Callable:
    def init(position, rng_key=None):
        """Momentum ``~ N(0, M^{-1})`` when ``rng_key`` is given, zero otherwise."""
        logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
        _check_finite_init(kernel, logdensity)
        x, unravel = ravel_pytree(position)
        if rng_key is None:
            p = jnp.zeros_like(x)
        else:
            metric = _Metric.make(kernel, inverse_mass_matrix, x.size)
            p = metric.inv_sqrt_mul(jax.random.normal(rng_key, x.shape, x.dtype))
        return UnderdampedState(position, unravel(p), logdensity, grad)

    return init


def _check_underdamped(kernel, step_size, friction):
    _check_positive(kernel, "step_size", step_size)
    _check_positive(kernel, "friction", friction)


def underdamped(
    logdensity_fn: Callable,
    step_size: float,
    friction: float = 1.0,
    inverse_mass_matrix: Any = None,
    adjusted: bool = False,
    num_integration_steps: int = 1,
) -> SamplingAlgorithm:
    r"""Kinetic (underdamped) Langevin dynamics, BAOAB splitting; ``adjusted=True`` is :func:`obabo`.

    One step of size ``h`` (``a = exp(-gamma h)``, ``M`` the inverse mass matrix):

    .. math::
        B:\ p \mathrel{+}= \tfrac h2 \nabla\log p(x);\quad A:\ x \mathrel{+}= \tfrac h2 M p;\quad
        O:\ p \leftarrow a\,p + \sqrt{1-a^2}\,M^{-1/2}\xi;\quad A;\quad B.

    (Leimkuhler & Matthews 2013, *Appl. Math. Res. Express*; 2015 *Molecular Dynamics*,
    ch. 7.) The O step is the exact Ornstein-Uhlenbeck flow of the friction and noise. On a
    Gaussian target BAOAB's stationary positions are *exact* for every stable ``h``
    (``h^2 < 4 lam_min``, ``lam`` the eigenvalues of the preconditioned covariance); its
    momenta (after the last B) have variance ``(1 - h^2 / (4 lam))`` in units of
    ``M^{-1}`` -- a second-order error. On non-Gaussian targets the position bias is
    ``O(h^2)``. The final B's gradient is cached, so one gradient per step. ``friction``
    ``gamma`` > 0; ``init(position, rng_key)`` draws the momentum (zero without a key).
    Diagonal or dense ``M``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = underdamped(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5, friction=2.0)
        >>> state = alg.init(jnp.zeros(2), jax.random.key(0))
        >>> state, info = alg.step(jax.random.key(1), state)
        >>> state.momentum.shape, int(info.n_grad)
        ((2,), 1)
    """
    if adjusted:
        return obabo(logdensity_fn, step_size, friction, inverse_mass_matrix, num_integration_steps)
    _check_underdamped("underdamped", step_size, friction)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        p = ravel_pytree(state.momentum)[0]
        g = ravel_pytree(state.logdensity_grad)[0]
        metric = _Metric.make("underdamped", inverse_mass_matrix, x.size)
        half = 0.5 * step_size
        a = jnp.exp(-friction * step_size)
        p = p + half * g
        x = x + half * metric.mul(p)
        xi = jax.random.normal(rng_key, x.shape, x.dtype)
        p = a * p + jnp.sqrt(1.0 - a * a) * metric.inv_sqrt_mul(xi)
        x = x + half * metric.mul(p)
        logdensity, grad = jax.value_and_grad(logdensity_fn)(unravel(x))
        p = p + half * ravel_pytree(grad)[0]
        return UnderdampedState(unravel(x), unravel(p), logdensity, grad), UnderdampedInfo(_as_int(1))

    return SamplingAlgorithm(_underdamped_init("underdamped", logdensity_fn, inverse_mass_matrix), step)


def obabo(
    logdensity_fn: Callable,
    step_size: float,
    friction: float = 1.0,
    inverse_mass_matrix: Any = None,
    num_integration_steps: int = 1,
) -> SamplingAlgorithm:
    r"""Metropolis-adjusted kinetic Langevin (OBABO): generalized HMC with partial momentum refresh.

    With ``a = exp(-gamma h / 2)`` and ``H(x, p) = -log p(x) + p^T M p / 2``, one step is

    1. O: ``p <- a p + sqrt(1 - a^2) M^{-1/2} xi`` (exact for ``N(0, M^{-1})``);
    2. ``L = num_integration_steps`` leapfrog (BAB) steps of size ``h``: ``(x*, p*)``;
    3. accept ``(x*, p*)`` with probability ``min(1, exp(H(x, p) - H(x*, p*)))``, otherwise
       keep ``x`` and *flip* the momentum, ``p <- -p``;
    4. O again.

    Each of the three parts leaves ``p(x) N(p; 0, M^{-1})`` invariant (step 3 is a
    Metropolis step for the involution "leapfrog then flip", followed by a flip), so the
    chain is exact (Horowitz 1991, *Phys. Lett. B* 268; Neal 2011, *MCMC using Hamiltonian
    dynamics*, sec. 5.5.3). The flip on rejection is what makes it exact, and also what
    makes low acceptance costly: target 0.65-0.8. Gradients per step: ``L`` (cached at the
    end of each leapfrog trajectory).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = obabo(lambda x: -0.5 * jnp.sum(x**2), step_size=0.8)
        >>> state, info = alg.step(jax.random.key(1), alg.init(jnp.ones(2), jax.random.key(0)))
        >>> int(info.n_grad), bool(info.is_accepted) in (True, False)
        (1, True)
    """
    _check_underdamped("obabo", step_size, friction)
    L = int(num_integration_steps)
    if L < 1:
        raise ValueError(f"langevin.obabo(num_integration_steps={num_integration_steps}): must be >= 1.")
    vg = jax.value_and_grad(logdensity_fn)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        p = ravel_pytree(state.momentum)[0]
        metric = _Metric.make("obabo", inverse_mass_matrix, x.size)
        a = jnp.exp(-0.5 * friction * step_size)
        k1, k2, k3 = jax.random.split(rng_key, 3)

        def refresh(key, p):
            xi = jax.random.normal(key, p.shape, p.dtype)
            return a * p + jnp.sqrt(1.0 - a * a) * metric.inv_sqrt_mul(xi)

        p = refresh(k1, p)
        h0 = -state.logdensity + metric.kinetic(p)

        def leapfrog(carry, _):
            y, q, _, grad = carry
            q = q + 0.5 * step_size * ravel_pytree(grad)[0]
            y = y + step_size * metric.mul(q)
            logdensity, grad = vg(unravel(y))
            q = q + 0.5 * step_size * ravel_pytree(grad)[0]
            return (y, q, logdensity, grad), None

        carry = (x, p, state.logdensity, state.logdensity_grad)
        (y, q, logdensity_y, grad_y), _ = jax.lax.scan(leapfrog, carry, None, length=L)
        h1 = -logdensity_y + metric.kinetic(q)
        delta = h0 - h1
        acceptance_rate, is_accepted = _accept(k2, delta)
        x_new = jnp.where(is_accepted, y, x)
        p_new = jnp.where(is_accepted, q, -p)
        logdensity = jnp.where(is_accepted, logdensity_y, state.logdensity)
        grad = jax.tree.map(lambda u, v: jnp.where(is_accepted, u, v), grad_y, state.logdensity_grad)
        p_new = refresh(k3, p_new)
        info = OBABOInfo(acceptance_rate, is_accepted, jnp.logical_not(delta > -1000.0),
                         -logdensity + metric.kinetic(p_new), _as_int(L))
        return UnderdampedState(unravel(x_new), unravel(p_new), logdensity, grad), info

    return SamplingAlgorithm(_underdamped_init("obabo", logdensity_fn, inverse_mass_matrix), step)


def _phi1(z):
    """``1 - exp(-z)``, accurate near 0."""
    return -jnp.expm1(-z)


def _phi2(z):
    """``z - (1 - exp(-z))`` (= z^2/2 - z^3/6 + ...), accurate near 0."""
    small = z < 0.1
    zs = jnp.where(small, z, 0.0)
    series = zs**2 / 2 - zs**3 / 6 + zs**4 / 24 - zs**5 / 120
    return jnp.where(small, series, z + jnp.expm1(-z))


def _phi3(z):
    """``z - 2(1 - e^{-z}) + (1 - e^{-2z})/2`` (= z^3/3 - z^4/4 + ...), accurate near 0."""
    small = z < 0.1
    zs = jnp.where(small, z, 0.0)
    series = zs**3 / 3 - zs**4 / 4 + 7 * zs**5 / 60 - zs**6 / 24
    return jnp.where(small, series, z + 2.0 * jnp.expm1(-z) - 0.5 * jnp.expm1(-2.0 * z))


def _ou_noise(key, tau, gamma, shape, dtype):
    r"""Per-coordinate noise of the linear flow ``dx = v dt, dv = -gamma v dt + sqrt(2 gamma) dW``.

    Over a time ``tau`` the flow's noise is ``(Z_v, Z_x) = (sqrt(2g) int e^{-g(tau-s)} dW_s,
    sqrt(2g) int (1 - e^{-g(tau-s)})/g dW_s)``, jointly Gaussian with (``z = g tau``)
    ``Var Z_v = 1 - e^{-2z}``, ``Cov = (1 - e^{-z})^2 / g``,
    ``Var Z_x = 2 (z - 2(1-e^{-z}) + (1-e^{-2z})/2) / g^2``. Sampled by a 2x2 Cholesky
    factor; ``Var Z_x - Cov^2/Var Z_v = (2 phi3(z) - (1-e^{-z})^3/(1+e^{-z})) / g^2``.
    """
    z = gamma * tau
    e = jnp.exp(-z)
    var_v = _phi1(2.0 * z)
    c = _phi1(z)
    # Cov / sqrt(Var Z_v) = (1-e^{-z})^2 / (g sqrt((1-e^{-z})(1+e^{-z}))).
    l21 = c * jnp.sqrt(c / (1.0 + e)) / gamma
    l22 = jnp.sqrt(jnp.maximum(2.0 * _phi3(z) - c**3 / (1.0 + e), 0.0)) / gamma
    xi = jax.random.normal(key, (2,) + shape, dtype)
    return jnp.sqrt(var_v) * xi[0], l21 * xi[0] + l22 * xi[1]


def randomized_midpoint(
    logdensity_fn: Callable,
    step_size: float,
    friction: float = 1.0,
    inverse_mass_matrix: Any = None,
) -> SamplingAlgorithm:
    r"""Randomized midpoint method for kinetic Langevin dynamics (Shen & Lee, NeurIPS 2019).

    In velocity form (``v = M p``, ``f = M grad log p``) the dynamics are
    ``dx = v dt, dv = f(x) dt - gamma v dt + sqrt(2 gamma) M^{1/2} dW``, whose exact solution
    over ``[0, h]`` is, with ``phi(t) = (1 - e^{-gamma t}) / gamma``,

    .. math::
        v_h = e^{-\gamma h} v_0 + \int_0^h e^{-\gamma (h-s)} f(x_s)\,ds + W_v,\qquad
        x_h = x_0 + \phi(h) v_0 + \int_0^h \phi(h-s) f(x_s)\,ds + W_x.

    The method estimates both integrals by ``h`` times the integrand at a uniformly random
    time ``s = alpha h`` (unbiased in ``alpha``), with ``x_s`` predicted by the same formula
    with the force frozen at ``f(x_0)``:
    ``x_mid = x_0 + phi(alpha h) v_0 + ((alpha h - phi(alpha h)) / gamma) f(x_0) + W_mid``.
    ``W_mid``, ``W_x``, ``W_v`` are integrals of one Brownian path, sampled exactly by
    splitting it at ``alpha h`` (see ``_ou_noise``). Two gradients per step: at ``x_mid``
    and at the new position (cached for the next step's prediction). The randomization
    removes the leading bias of deterministic midpoint rules: Shen & Lee prove
    ``O~(d^{1/3} / eps^{2/3})`` gradients for ``eps`` accuracy in W2 for strongly
    log-concave smooth targets. Diagonal or dense ``M``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = randomized_midpoint(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5)
        >>> state, info = alg.step(jax.random.key(1), alg.init(jnp.zeros(3), jax.random.key(0)))
        >>> int(info.n_grad)
        2
    """
    _check_underdamped("randomized_midpoint", step_size, friction)
    vg = jax.value_and_grad(logdensity_fn)

    def step(rng_key, state):
        x, unravel = ravel_pytree(state.position)
        metric = _Metric.make("randomized_midpoint", inverse_mass_matrix, x.size)
        v = metric.mul(ravel_pytree(state.momentum)[0])
        f0 = metric.mul(ravel_pytree(state.logdensity_grad)[0])
        k_alpha, k1, k2 = jax.random.split(rng_key, 3)
        h, g = step_size, friction
        alpha = jax.random.uniform(k_alpha, dtype=x.dtype)
        t1, t2 = alpha * h, (1.0 - alpha) * h
        zv1, zx1 = _ou_noise(k1, t1, g, x.shape, x.dtype)  # Brownian path on [0, alpha h]
        zv2, zx2 = _ou_noise(k2, t2, g, x.shape, x.dtype)  # ... and on [alpha h, h]
        zv1, zx1, zv2, zx2 = (metric.sqrt_mul(z) for z in (zv1, zx1, zv2, zx2))
        w_mid = zx1
        w_v = jnp.exp(-g * t2) * zv1 + zv2
        w_x = zx1 + (_phi1(g * t2) / g) * zv1 + zx2
        x_mid = x + (_phi1(g * t1) / g) * v + (_phi2(g * t1) / g**2) * f0 + w_mid
        f_mid = metric.mul(ravel_pytree(jax.grad(logdensity_fn)(unravel(x_mid)))[0])
        x_new = x + (_phi1(g * h) / g) * v + h * (_phi1(g * t2) / g) * f_mid + w_x
        v_new = jnp.exp(-g * h) * v + h * jnp.exp(-g * t2) * f_mid + w_v
        logdensity, grad = vg(unravel(x_new))
        p_new = metric.solve(v_new)
        return (UnderdampedState(unravel(x_new), unravel(p_new), logdensity, grad),
                UnderdampedInfo(_as_int(2)))

    return SamplingAlgorithm(
        _underdamped_init("randomized_midpoint", logdensity_fn, inverse_mass_matrix), step
    )
