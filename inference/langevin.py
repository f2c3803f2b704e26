r"""Langevin samplers as BlackJAX-protocol kernels, and a differentiable short-run Langevin flow.

Every kernel is built as ``alg = kernel(logdensity_fn, step_size=..., ...)`` and used as
``state = alg.init(position, rng_key=None)``, ``state, info = alg.step(key, state)``. Steps
are pure, jittable and ``jax.vmap``-able over chains; positions may be any pytree (dicts of
arrays). Every ``info`` has ``n_grad``, the gradient evaluations of that step; kernels with
an accept step also report ``acceptance_rate`` and ``is_accepted``. States cache the log
density and its gradient at the current position, so each step costs the minimum number of
gradient evaluations (1 for all but the randomized midpoint kernel, which needs 2).

Conventions. ``log p`` is the target's log density, ``g = grad log p``, ``h`` the step
size. The optional ``inverse_mass_matrix`` ``M`` (a vector: diagonal; a matrix: dense; over
the flattened position, see ``jax.flatten_util.ravel_pytree``) preconditions every kernel:
the overdamped kernels follow ``dX = M g dt + sqrt(2) M^{1/2} dW``, the underdamped ones

.. math::  dX = M P\,dt, \qquad dP = g(X)\,dt - \gamma P\,dt + \sqrt{2\gamma}\,M^{-1/2} dW,

whose stationary law is ``p(x) N(p; 0, M^{-1})`` (``gamma`` is ``friction``).

Kernels: :func:`ula`, :func:`mala`, :func:`underdamped` (BAOAB), :func:`obabo` (=
``underdamped(adjusted=True)``), :func:`randomized_midpoint`, :func:`sgld`, :func:`sghmc`
(with :func:`minibatch_grad_estimator`). Tuning: :func:`adapt`. Flow: :func:`flow`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree

from inference import adaptation

__all__ = [
    "LangevinState", "UnderdampedState", "SGLDState", "SGHMCState",
    "ULAInfo", "MALAInfo", "UnderdampedInfo", "OBABOInfo", "SGInfo",
    "ula", "mala", "underdamped", "obabo", "randomized_midpoint", "sgld", "sghmc",
    "minibatch_grad_estimator", "adapt", "flow",
]


# ----------------------------------------------------------------------------------------
# States and infos
# ----------------------------------------------------------------------------------------
class LangevinState(NamedTuple):
    """State of the overdamped kernels (ULA, MALA): position, log p and grad log p there."""

    position: Any
    logdensity: jax.Array
    logdensity_grad: Any


class UnderdampedState(NamedTuple):
    """State of the kinetic kernels (BAOAB, OBABO, randomized midpoint)."""

    position: Any
    momentum: Any
    logdensity: jax.Array
    logdensity_grad: Any


class SGLDState(NamedTuple):
    """State of SGLD: the position only (stochastic gradients are not reusable)."""

    position: Any


class SGHMCState(NamedTuple):
    """State of SGHMC: position and momentum."""

    position: Any
    momentum: Any


class ULAInfo(NamedTuple):
    n_grad: jax.Array


class MALAInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    n_grad: jax.Array


class UnderdampedInfo(NamedTuple):
    n_grad: jax.Array


class OBABOInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    n_grad: jax.Array


class SGInfo(NamedTuple):
    n_grad: jax.Array


# ----------------------------------------------------------------------------------------
# Helpers: checks, flat views, the preconditioner
# ----------------------------------------------------------------------------------------
def _concrete(x: Any) -> float | None:
    """``float(x)`` when ``x`` is a concrete scalar, None under tracing."""
    try:
        return float(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _check_positive(kernel: str, name: str, value: Any) -> None:
    v = _concrete(value)
    if v is not None and not v > 0.0:
        raise ValueError(f"langevin.{kernel}({name}={value}): must be > 0.")


def _check_finite_init(kernel: str, logdensity: jax.Array) -> None:
    v = _concrete(logdensity)
    if v is not None and not jnp.isfinite(v):
        raise ValueError(
            f"langevin.{kernel}: the log density at the initial position is {v}; start the "
            "chain where the target density is positive (and finite)."
        )


def _flat_value_and_grad(logdensity_fn: Callable, unravel: Callable) -> Callable:
    vg = jax.value_and_grad(logdensity_fn)

    def fn(x):
        value, grad = vg(unravel(x))
        return value, ravel_pytree(grad)[0]

    return fn


class _Metric(NamedTuple):
    """The inverse mass matrix ``M``: identity, diagonal (vector) or dense (matrix)."""

    imm: jax.Array | None
    chol: jax.Array | None  # lower Cholesky factor of a dense M

    @staticmethod
    def make(kernel: str, inverse_mass_matrix: Any, dim: int, allow_dense: bool = True) -> "_Metric":
        if inverse_mass_matrix is None:
            return _Metric(None, None)
        if isinstance(inverse_mass_matrix, (dict, list, tuple)):
            inverse_mass_matrix = ravel_pytree(inverse_mass_matrix)[0]  # a pytree of diagonals
        imm = jnp.asarray(inverse_mass_matrix)
        if imm.shape == (dim,):
            return _Metric(imm, None)
        if imm.shape == (dim, dim) and allow_dense:
            return _Metric(imm, jnp.linalg.cholesky(imm))
        want = f"({dim},) or ({dim}, {dim})" if allow_dense else f"({dim},)"
        raise ValueError(f"langevin.{kernel}: inverse_mass_matrix has shape {imm.shape}; "
                         f"expected {want} for a position with {dim} scalars.")

    def mul(self, v):  # M v
        if self.imm is None:
            return v
        return self.imm * v if self.chol is None else self.imm @ v

    def solve(self, v):  # M^{-1} v
        if self.imm is None:
            return v
        if self.chol is None:
            return v / self.imm
        return jax.scipy.linalg.cho_solve((self.chol, True), v)

    def sqrt_mul(self, z):  # M^{1/2} z (a factor S with S S^T = M): z ~ N(0, I) -> N(0, M)
        if self.imm is None:
            return z
        return jnp.sqrt(self.imm) * z if self.chol is None else self.chol @ z

    def inv_sqrt_mul(self, z):  # z ~ N(0, I) -> N(0, M^{-1})
        if self.imm is None:
            return z
        if self.chol is None:
            return z / jnp.sqrt(self.imm)
        return jax.scipy.linalg.solve_triangular(self.chol.T, z, lower=False)

    def inv_quad(self, v):  # v^T M^{-1} v
        if self.imm is None or self.chol is None:
            return jnp.sum(v * self.solve(v))
        w = jax.scipy.linalg.solve_triangular(self.chol, v, lower=True)
        return jnp.sum(w * w)

    def kinetic(self, p):  # p^T M p / 2
        return 0.5 * jnp.sum(p * self.mul(p))


def _as_int(n: int) -> jax.Array:
    return jnp.asarray(n, dtype=jnp.int32)


# ----------------------------------------------------------------------------------------
# Overdamped: ULA and MALA
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Underdamped (kinetic) Langevin: BAOAB, OBABO (GHMC), randomized midpoint
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Stochastic-gradient kernels
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Tuning
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Short-run Langevin flow
# ----------------------------------------------------------------------------------------
def flow(
    logdensity_fn: Callable,
    x0: Any,
    key: jax.Array,
    steps: int,
    step_size: float,
    noise: bool = True,
    return_path: bool = False,
    params: Any = None,
    checkpoint: bool = True,
):
    r"""``K = steps`` ULA steps from ``x0``, differentiable in ``x0`` and the energy's parameters.

    .. math::  x_{k+1} = x_k + h\,\nabla_x \log p_\theta(x_k) + \sqrt{2h}\,\xi_k
               \quad(\text{the } \xi \text{ term only with } \texttt{noise=True}).

    Short-run (non-convergent) Langevin flows are the sampler inside energy-based model
    training (Nijkamp et al. 2019, *Learning non-convergent non-persistent short-run MCMC
    toward energy-based model*), amortised inference in latent-variable models, and a
    refinement of variational samples. ``logdensity_fn(x)`` or, with ``params`` given,
    ``logdensity_fn(x, params)``; ``x`` may be a pytree. The result ``x_K`` (and with
    ``return_path=True`` also the path, each leaf stacked as ``(K + 1, ...)`` starting at
    ``x0``) is differentiable by ``jax.grad`` with respect to ``x0``, ``params`` and
    anything ``logdensity_fn`` closes over; the noise is a function of ``key`` only.

    Memory: reverse-mode through ``K`` steps would keep every step's intermediates (for a
    neural energy, its activations). With ``checkpoint=True`` the steps run as
    ``ceil(K / c)`` blocks of ``c = ceil(sqrt(K))`` steps, each block ``jax.checkpoint``-ed
    and each step inside checkpointed too: the backward pass stores ``O(sqrt(K))``
    positions and recomputes the rest (at most ~2 extra forward passes), instead of
    ``O(K)`` steps' intermediates.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logp = lambda x, mu: -0.5 * jnp.sum((x - mu) ** 2)
        >>> xk = flow(logp, jnp.zeros(2), jax.random.key(0), steps=100, step_size=0.1,
        ...           noise=False, params=jnp.array(3.0))
        >>> [round(float(v), 3) for v in xk]
        [3.0, 3.0]
        >>> dmu = jax.grad(lambda mu: flow(logp, jnp.zeros(2), jax.random.key(0), 100, 0.1,
        ...                                noise=False, params=mu).sum())(3.0)
        >>> round(float(dmu), 3)  # d/dmu of 2 (1 - 0.9^100) mu
        2.0
    """
    K = int(steps)
    if K < 0:
        raise ValueError(f"langevin.flow(steps={steps}): must be >= 0.")
    _check_positive("flow", "step_size", step_size)
    if params is None:
        grad_fn = jax.grad(lambda x, _: logdensity_fn(x))
    else:
        grad_fn = jax.grad(logdensity_fn)
    scale = jnp.sqrt(2.0 * step_size)

    def one(x, k):
        g = grad_fn(x, params)
        leaves, treedef = jax.tree.flatten(x)
        if noise:
            keys = jax.random.split(k, len(leaves))
            xi = [jax.random.normal(kk, jnp.shape(v), jnp.result_type(v)) for kk, v in zip(keys, leaves)]
        else:
            xi = [jnp.zeros_like(v) for v in leaves]
        g_leaves = jax.tree.leaves(g)
        new = [v + step_size * gv + scale * z for v, gv, z in zip(leaves, g_leaves, xi)]
        return jax.tree.unflatten(treedef, new)

    if K == 0:
        return (x0, jax.tree.map(lambda v: jnp.asarray(v)[None], x0)) if return_path else x0
    step = jax.checkpoint(one) if checkpoint else one
    keys = jax.random.split(key, K)

    def run(x, ks, record):
        def body(x, k):
            x = step(x, k)
            return x, (x if record else None)

        return jax.lax.scan(body, x, ks)

    if checkpoint and not return_path and K > 4:
        c = math.isqrt(K)
        c += c * c < K  # ceil(sqrt(K))
        n_blocks, rest = divmod(K, c)
        block = jax.checkpoint(lambda x, ks: run(x, ks, False)[0])
        xk, _ = jax.lax.scan(lambda x, ks: (block(x, ks), None), x0,
                             keys[: n_blocks * c].reshape((n_blocks, c) + keys.shape[1:]))
        if rest:
            xk = run(xk, keys[n_blocks * c:], False)[0]
        return xk
    xk, path = run(x0, keys, return_path)
    if return_path:
        path = jax.tree.map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]), x0, path)
        return xk, path
    return xk
