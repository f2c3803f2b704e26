r"""Tempered sequential Monte Carlo: any kernel as the move, with a log evidence estimate.

Tempering bridges the prior ``p0`` and the posterior through the path

.. math::  \pi_\beta(x) \propto p_0(x)\,L(x)^\beta, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1.

A population of ``N`` particles drawn from the prior is carried along the path. At stage
``t`` each particle gets the incremental weight ``w_i = L(x_i)^{\beta_t - \beta_{t-1}}``;
``mean_i w_i`` estimates the ratio ``Z_t / Z_{t-1}`` of the path's normalising constants,
and the sum over stages of ``log mean_i w_i`` estimates the log evidence ``log Z = log \int p_0 L`` (Del Moral, Doucet &
Jasra 2006, *JRSS B* 68(3); Chopin & Papaspiliopoulos 2020, *An Introduction to Sequential
Monte Carlo*, ch. 17). The particles are then resampled (systematic by default) and moved
by ``num_mcmc_steps`` steps of an MCMC kernel that leaves ``\pi_{\beta_t}`` invariant.
Since every stage resamples, the final population is equally weighted.

``exp(log Z-hat)`` is unbiased for ``Z``; ``log Z-hat`` itself is biased low by about half
its variance (Jensen's inequality), which shrinks as ``1/N``.

Adaptive tempering (``schedule=None``): the next ``beta`` is found by bisection so that the
effective sample size of the incremental weights, ``(sum w)^2 / sum w^2``, is
``target_ess * N`` (Jasra et al. 2011, *Scand. J. Stat.* 38(1)); it runs in a
``jax.lax.while_loop``. A fixed ``schedule`` runs in a ``jax.lax.scan``. Both are jittable
and ``vmap``-able (independent SMC runs).

The step-size rule (``adapt_step_size=True``) for kernels whose step size the SMC sets:

* If the kernel takes an ``inverse_mass_matrix``, it gets the diagonal of the weighted
  particle variance at the new temperature (computed before resampling), so the step size
  is relative to the population's spread and shrinks with it automatically.
* If the kernel reports ``acceptance_rate``, the (relative) step size follows a
  multiplicative controller toward ``target_acceptance``:
  ``h_{t+1} = h_t * exp(2 (mean acceptance at stage t - target_acceptance))``
  (at most a factor ``e^{-2 * target}`` down or ``e^{2 (1 - target)}`` up per stage).
  Unadjusted kernels (ULA) keep ``h`` fixed at its initial value (relative to the spread).

Which kernels (``kernel=``):

* a name: ``"mala"`` (:func:`inference.langevin.mala`, target acceptance 0.574),
  ``"ula"`` (:func:`inference.langevin.ula`, initial relative step 0.05), ``"rwm"``
  (Gaussian random-walk Metropolis, no gradients, target acceptance 0.234);
* a kernel factory with a ``step_size`` parameter, e.g. :func:`inference.langevin.mala`,
  ``functools.partial(langevin.mala, step_size=0.1)`` (0.1 is then the initial step size)
  or ``blackjax.mala``: the SMC sets ``step_size`` (and ``inverse_mass_matrix`` when the
  factory takes one) at every stage;
* any other callable ``logdensity_fn -> SamplingAlgorithm`` (e.g.
  ``lambda f: blackjax.mala(f, 0.1)``): used as is, nothing adapted.

With ``adapt_step_size=False`` a factory is called as ``kernel(logdensity_fn)`` (or with
``step_size=init_step_size`` when given), i.e. nothing is adapted either.

Gradient counts (``n_grad``), summed over stages, particles and steps: a move step counts
``info.n_grad`` when the kernel reports it (our kernels), else ``info.num_integration_steps``
(BlackJAX's HMC and NUTS: one gradient per leapfrog step), else the gradients of the target
found by tracing one step (BlackJAX's MALA: 1; a random walk: 0). Each stage
re-initialises the kernel's state at the new temperature; the gradients that init takes
(found by tracing it: 1 for MALA, 0 for a random walk) are counted too. Tempering itself
(the weights, the bisection for the next temperature, the step-size rule) uses likelihood
values only, no gradients.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from inference import langevin
    >>> logprior = lambda x: -0.5 * x**2 - 0.5 * jnp.log(2 * jnp.pi)     # N(0, 1)
    >>> loglik = lambda x: -0.5 * (1.0 - x)**2 - 0.5 * jnp.log(2 * jnp.pi)  # y = 1 ~ N(x, 1)
    >>> x0 = jax.random.normal(jax.random.key(0), (2000,))
    >>> out = tempered_smc(logprior, loglik, langevin.mala, x0, jax.random.key(1),
    ...                    num_mcmc_steps=5)
    >>> exact = -0.5 * jnp.log(2 * jnp.pi * 2.0) - 0.25   # y ~ N(0, 2)
    >>> bool(abs(out.log_evidence - exact) < 0.05), round(float(out.temperatures[0]), 1)
    (True, 0.0)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from inference import langevin
from inference.arguments import split_arguments, static_part
from inference.compilation import compiling
from inference.progress import ProgressBar, Relay
from inference.sharding import constrain_leading, describe, gather, mesh_for, put_leading
from inference.smc_checks import (Probe, cpu_mesh_without_lapack, lapack_ops, probe_move,
                                  raise_if_no_likelihood)
from inference.method import Method
from ppl.errors import ModelError
from ppl.potential import potential as make_potential
from ppl.tracing import latent_sites, model_name, trace_model

__all__ = ["SMC", "SMCResult", "tempered_smc", "KERNELS", "RESAMPLING", "resample"]


# ----------------------------------------------------------------------------------------
# A gradient-free move: Gaussian random-walk Metropolis (private; ``kernel="rwm"``)
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Resampling and effective sample size
# ----------------------------------------------------------------------------------------
def _normalized(log_weights: jax.Array) -> jax.Array:
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    return jax.nn.softmax(log_weights)


def _from_uniforms(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Indices ``i`` with ``cumsum(w)[i-1] <= u < cumsum(w)[i]`` for sorted ``u`` in [0, 1)."""
    cdf = jnp.cumsum(weights)
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    return jnp.clip(idx, 0, weights.shape[0] - 1)


def _systematic(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    u = (jax.random.uniform(key, dtype=weights.dtype) + jnp.arange(n, dtype=weights.dtype)) / n
    return _from_uniforms(weights, u)


def _stratified(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    u = (jax.random.uniform(key, (n,), dtype=weights.dtype) + jnp.arange(n, dtype=weights.dtype)) / n
    return _from_uniforms(weights, u)


def _multinomial(key: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    return _from_uniforms(weights, jnp.sort(jax.random.uniform(key, (n,), dtype=weights.dtype)))


#: Resampling schemes by name: ``(key, normalized weights (N,), n) -> indices (n,)``.
#: All are unbiased (each index ``i`` appears ``n w_i`` times in expectation); systematic and
#: stratified have lower variance than multinomial (Douc, Cappé & Moulines 2005).
RESAMPLING: dict[str, Callable] = {
    "systematic": _systematic,
    "stratified": _stratified,
    "multinomial": _multinomial,
}


def resample(key: jax.Array, log_weights: jax.Array, method: str = "systematic",
             num: int | None = None) -> jax.Array:
    """Ancestor indices drawn in proportion to ``exp(log_weights)`` (NaN counts as weight 0).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> idx = resample(jax.random.key(0), jnp.log(jnp.array([0.0, 0.5, 0.5])))
        >>> idx.shape, bool((idx > 0).all())  # particle 0 has weight 0
        ((3,), True)
    """
    if method not in RESAMPLING:
        raise ValueError(f"resample(method={method!r}): unknown; use one of {sorted(RESAMPLING)}.")
    n = log_weights.shape[0] if num is None else int(num)
    return RESAMPLING[method](key, _normalized(log_weights), n)


def _ess_fraction(log_weights: jax.Array) -> jax.Array:
    """``(sum w)^2 / (N sum w^2)`` in (0, 1]; 0 when every weight is 0."""
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    a = jax.nn.logsumexp(log_weights)
    b = jax.nn.logsumexp(2.0 * log_weights)
    frac = jnp.exp(2.0 * a - b) / log_weights.shape[0]
    return jnp.where(jnp.isfinite(a), frac, 0.0)


def _increment_weights(delta: jax.Array, loglik: jax.Array) -> jax.Array:
    # delta * (-inf) must be -inf for delta > 0 and 0 (not NaN) for delta == 0.
    return jnp.where(loglik == -jnp.inf, jnp.where(delta > 0, -jnp.inf, 0.0), delta * loglik)


def _next_temperature(loglik: jax.Array, beta: jax.Array, target_ess: float,
                      iterations: int = 60) -> jax.Array:
    """The largest ``beta' <= 1`` (up to bisection accuracy) with ESS fraction >= target_ess.

    If even an infinitesimal step falls below the target (some particles have zero
    likelihood and they are too many), the smallest bisection step is taken: resampling then
    removes those particles and the next stage proceeds normally.
    """
    dmax = 1.0 - beta
    ok_full = _ess_fraction(_increment_weights(dmax, loglik)) >= target_ess

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = _ess_fraction(_increment_weights(mid, loglik)) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(dmax), dmax))
    delta = jnp.where(lo > 0, lo, hi)
    return jnp.where(ok_full, jnp.ones_like(beta), jnp.minimum(beta + delta, 1.0))


# ----------------------------------------------------------------------------------------
# The move kernel: what the SMC can set
# ----------------------------------------------------------------------------------------
class _Move(NamedTuple):
    build: Callable  # (logdensity_fn, step_size, inverse_mass_matrix) -> SamplingAlgorithm
    tunable: bool  # the SMC sets the step size
    preconditioned: bool  # the SMC passes the particles' variance as inverse_mass_matrix
    init_step_size: float | None
    target_acceptance: float | None
    name: str


def _signature_of(kernel: Callable) -> inspect.Signature | None:
    fn = getattr(kernel, "differentiable", kernel)  # blackjax.mala & co. wrap their factory
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _resolve_kernel(kernel: Any, init_step_size: float | None, target_acceptance: float | None,
                    adapt_step_size: bool, dim: int, where: str = "tempered_smc") -> _Move:
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(
                f"{where}(kernel={kernel!r}): unknown kernel name; use one of {sorted(KERNELS)}, "
                "a kernel factory taking (logdensity_fn, step_size, ...) such as "
                "inference.langevin.mala, or a callable logdensity_fn -> SamplingAlgorithm."
            )
        spec = KERNELS[kernel]
        factory = spec.factory
        h0 = spec.init_step_size(dim) if init_step_size is None else float(init_step_size)
        target = spec.target_acceptance if target_acceptance is None else float(target_acceptance)
        if not adapt_step_size:
            return _Move(lambda f, h, m: factory(f, h0), False, False, h0, None, kernel)
        return _Move(lambda f, h, m: factory(f, h, m), True, True, h0, target, kernel)
    if not callable(kernel):
        raise TypeError(
            f"{where}(kernel={kernel!r}): must be one of {sorted(KERNELS)}, a kernel factory "
            "(logdensity_fn, step_size, ...) -> SamplingAlgorithm, or a callable "
            "logdensity_fn -> SamplingAlgorithm."
        )
    name = getattr(kernel, "__name__", None) or type(kernel).__name__
    sig = _signature_of(kernel)
    params = {} if sig is None else sig.parameters
    takes_step = "step_size" in params
    takes_imm = "inverse_mass_matrix" in params
    default = params["step_size"].default if takes_step else inspect.Parameter.empty
    target = 0.574 if target_acceptance is None else float(target_acceptance)
    if not (takes_step and adapt_step_size):
        h_fixed = init_step_size
        if takes_step and h_fixed is None and default is inspect.Parameter.empty:
            raise ValueError(
                f"{where}: kernel {name} needs a step_size and adapt_step_size=False; pass "
                "init_step_size=..., bind it (functools.partial(kernel, step_size=...)) or let "
                "the SMC adapt it."
            )
        if takes_step and h_fixed is not None:
            return _Move(lambda f, h, m: kernel(f, step_size=h_fixed), False, False,
                         float(h_fixed), None, name)
        return _Move(lambda f, h, m: kernel(f), False, False, None, None, name)
    if init_step_size is not None:
        h0 = float(init_step_size)
    elif default is not inspect.Parameter.empty and default is not None:
        h0 = float(default)
    else:
        h0 = float(dim) ** (-1.0 / 3.0)
    if takes_imm:
        build = lambda f, h, m: kernel(f, step_size=h, inverse_mass_matrix=m)  # noqa: E731
    else:
        build = lambda f, h, m: kernel(f, step_size=h)  # noqa: E731
    return _Move(build, True, takes_imm, h0, target, name)


def _info_field(info: Any, name: str) -> Any:
    if isinstance(info, dict):
        return info.get(name)
    return getattr(info, name, None)


def _step_grads(info: Any, traced: int) -> jax.Array:
    """Gradients one move step computed: ``info.n_grad`` when the kernel reports it, else
    ``info.num_integration_steps`` (BlackJAX's HMC/NUTS: one per leapfrog step), else the
    gradients found when tracing the step (``traced``, see :func:`inference.smc_checks.probe_move`)."""
    n = _info_field(info, "n_grad")
    if n is None:
        n = _info_field(info, "num_integration_steps")
    return jnp.asarray(traced if n is None else n, jnp.int32)


def _probe(move: _Move, logprior_fn: Callable, loglikelihood_fn: Callable, particle: Any,
           key: jax.Array, dim: int, dtype: Any) -> Probe:
    """:func:`inference.smc_checks.probe_move` for ``move`` at its initial step size."""
    h = 1.0 if move.init_step_size is None else move.init_step_size
    imm = jnp.ones((dim,), dtype) if move.preconditioned else None
    return probe_move(lambda f: move.build(f, h, imm), logprior_fn, loglikelihood_fn, particle, key)


# ----------------------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------------------
class SMCResult(NamedTuple):
    """What :func:`tempered_smc` returns.

    Attributes:
        particles: the final population (pytree, leading axis N), equally weighted,
            approximately distributed as the posterior.
        log_evidence: the estimate of ``log Z = log int prior * likelihood``.
        temperatures: (S + 1,) the inverse temperatures, starting at 0; for adaptive
            tempering ``S = max_stages`` and entries after ``num_stages`` are NaN.
        num_stages: the number of stages run (where ``temperatures`` reached 1, unless
            ``max_stages`` stopped it first).
        acceptance_rate: (S,) mean acceptance of the moves per stage (NaN for kernels that
            report none, and for stages not run).
        step_size: (S,) the step size the moves used per stage (relative to the particle
            variance when the kernel is preconditioned; NaN for a kernel used as is).
        ess: (S,) the ESS fraction of the incremental weights per stage.
        n_grad: total gradient evaluations (see the module docstring for what is counted).
        loglikelihood: (N,) the log likelihood at the final particles.
    """

    particles: Any
    log_evidence: jax.Array
    temperatures: jax.Array
    num_stages: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    ess: jax.Array
    n_grad: jax.Array
    loglikelihood: jax.Array


def _concrete(x: Any) -> Any:
    try:
        return np.asarray(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None


def _check_fraction(where: str, name: str, value: Any, allow_one: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = 0.0 < v < 1.0 or (allow_one and v == 1.0)
    if not ok:
        raise ValueError(f"{where}({name}={value!r}): must be in (0, 1{']' if allow_one else ')'}.")
    return v


def _check_int(where: str, name: str, value: Any, minimum: int) -> int:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{where}({name}={value!r}): must be an int >= {minimum}.")
    return int(value)


def _check_schedule(schedule: Any) -> jax.Array:
    sched = jnp.asarray(schedule, dtype=jnp.result_type(float))
    if sched.ndim != 1 or sched.shape[0] < 1:
        raise ValueError(f"tempered_smc(schedule=...): must be a 1-D sequence of inverse "
                         f"temperatures; got shape {sched.shape}.")
    values = _concrete(sched)
    if values is not None:
        if values[0] == 0.0:  # a leading 0 is the start, not a stage
            sched, values = sched[1:], values[1:]
        bad = (not np.all(np.diff(values) > 0) or values.size == 0 or not values[0] > 0
               or values[-1] != 1.0)
        if bad:
            raise ValueError(
                "tempered_smc(schedule=...): inverse temperatures must increase strictly from "
                f"above 0 to exactly 1 (a leading 0 is allowed); got {np.round(values, 4).tolist()}."
            )
    return sched


def tempered_smc(
    logprior_fn: Callable,
    loglikelihood_fn: Callable,
    kernel: str | Callable,
    positions: Any,
    key: jax.Array,
    *,
    num_mcmc_steps: int = 10,
    schedule: Any = None,
    target_ess: float = 0.5,
    resampling: str = "systematic",
    init_step_size: float | None = None,
    target_acceptance: float | None = None,
    adapt_step_size: bool = True,
    max_stages: int = 200,
    callback: Callable[[jax.Array], None] | None = None,
    mesh: Any = None,
) -> SMCResult:
    """Tempered SMC from prior draws ``positions`` to the posterior; a pure, jittable function.

    Args:
        logprior_fn: ``x -> log p0(x)``, normalised (for ``log Z`` to be the evidence), on the
            space the particles live in (in unconstrained space include the log-Jacobian).
        loglikelihood_fn: ``x -> log L(x)``; ``-inf`` and NaN count as zero likelihood.
            Where no particle has a finite likelihood, adaptive tempering stops at once
            (``num_stages`` 0, ``temperatures[0]`` 0): no weight can move the population.
        kernel: the move: a name in :data:`KERNELS`, a factory with a ``step_size``
            parameter (the SMC sets it), or a callable ``logdensity_fn -> SamplingAlgorithm``
            used as is. See the module docstring.
        positions: N >= 2 particles drawn from the prior: a pytree whose leaves share the
            leading axis N.
        key: a ``jax.random.key``.
        num_mcmc_steps: kernel steps per particle per stage.
        schedule: None for adaptive tempering, else the increasing inverse temperatures
            ending at 1 (a leading 0 is dropped).
        target_ess: the ESS fraction of the incremental weights aimed at by the adaptive
            schedule.
        resampling: ``"systematic"``, ``"stratified"`` or ``"multinomial"``.
        init_step_size: the first stage's step size (relative to the particle variance for
            preconditioned kernels); default: the kernel's own default (e.g. a
            ``functools.partial``'s), else ``d^{-1/3}`` (``d`` the dimension).
        target_acceptance: where the step-size controller steers; default 0.574 (MALA's
            optimum; the ``"rwm"`` kernel's default is 0.234).
        adapt_step_size: False: use the kernel's step size as given, no preconditioning.
        max_stages: the adaptive schedule stops here even if ``beta < 1`` (see
            ``result.temperatures``).
        callback: called inside the program after each stage with the new inverse
            temperature (a traced scalar); reach the host from it with
            ``jax.debug.callback`` (e.g. for a progress bar).
        mesh: a device mesh (:func:`inference.sharding.mesh_for`) to split the particles
            over: the moves run where the particles are, and resampling gathers across
            devices. ``None``: wherever ``positions`` are. A mesh of several CPU devices is
            not used (a warning says so) when the target or kernel uses LAPACK-backed
            operations such as a Cholesky: they can deadlock there
            (:func:`inference.smc_checks.cpu_mesh_without_lapack`).

    Returns:
        An :class:`SMCResult`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = {"a": jax.random.normal(jax.random.key(0), (500, 2))}
        >>> out = jax.jit(lambda x, k: tempered_smc(
        ...     lambda p: -0.5 * jnp.sum(p["a"] ** 2), lambda p: -2.0 * jnp.sum(p["a"] ** 2),
        ...     "rwm", x, k, num_mcmc_steps=5, schedule=[0.25, 0.5, 1.0]))(x0, jax.random.key(1))
        >>> out.particles["a"].shape, out.temperatures.tolist(), int(out.num_stages)
        ((500, 2), [0.0, 0.25, 0.5, 1.0], 3)
    """
    where = "tempered_smc"
    num_mcmc_steps = _check_int(where, "num_mcmc_steps", num_mcmc_steps, 1)
    max_stages = _check_int(where, "max_stages", max_stages, 1)
    target_ess = _check_fraction(where, "target_ess", target_ess)
    if resampling not in RESAMPLING:
        raise ValueError(f"{where}(resampling={resampling!r}): unknown; use one of {sorted(RESAMPLING)}.")
    if target_acceptance is not None:
        _check_fraction(where, "target_acceptance", target_acceptance)
    if init_step_size is not None and not float(init_step_size) > 0:
        raise ValueError(f"{where}(init_step_size={init_step_size!r}): must be > 0.")
    leaves = jax.tree.leaves(positions)
    if not leaves:
        raise ValueError(f"{where}: positions is empty; pass a pytree of particles with a leading axis.")
    sizes = {jnp.shape(v)[0] if jnp.ndim(v) else None for v in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"{where}: every leaf of positions needs the same leading (particle) axis; got "
            f"leaf shapes {[tuple(jnp.shape(v)) for v in leaves]}."
        )
    (n,) = sizes
    if n < 2:
        raise ValueError(f"{where}: need at least 2 particles; positions has {n}.")
    positions = jax.tree.map(jnp.asarray, positions)
    dim = int(ravel_pytree(jax.tree.map(lambda v: v[0], positions))[0].size)
    move = _resolve_kernel(kernel, init_step_size, target_acceptance, adapt_step_size, dim)
    resample_fn = RESAMPLING[resampling]
    dtype = jnp.result_type(float)

    flat = jax.vmap(lambda p: ravel_pytree(p)[0])
    loglik_all = jax.vmap(loglikelihood_fn)
    probe = _probe(move, logprior_fn, loglikelihood_fn, jax.tree.map(lambda v: v[0], positions),
                   key, dim, dtype)
    mesh = cpu_mesh_without_lapack(mesh, probe.lapack, "particles", where)
    split = lambda p: constrain_leading(p, mesh, n)  # noqa: E731
    positions = split(positions)

    def stage(carry, beta_next):
        particles, loglik, beta, log_z, h, n_grad, key = carry
        key, k_res, k_move = jax.random.split(key, 3)
        log_w = _increment_weights(beta_next - beta, loglik)
        log_z = log_z + jax.nn.logsumexp(log_w) - math.log(n)
        ess = _ess_fraction(log_w)
        w = _normalized(log_w)
        # The population's spread at the new temperature, from the weighted particles.
        x = flat(particles)
        mean = w @ x
        var = jnp.maximum(w @ (x - mean) ** 2, 1e-12)
        idx = resample_fn(k_res, w, n)
        particles = split(jax.tree.map(lambda v: v[idx], particles))

        def tempered(p):
            return logprior_fn(p) + beta_next * loglikelihood_fn(p)

        alg = move.build(tempered, h, var if move.preconditioned else None)

        def one(p, k):
            k_init, k_steps = jax.random.split(k)
            state = alg.init(p, k_init)

            def body(state, kk):
                state, info = alg.step(kk, state)
                acc = _info_field(info, "acceptance_rate")
                acc = jnp.full((), jnp.nan, dtype) if acc is None else jnp.asarray(acc, dtype)
                return state, (acc, _step_grads(info, probe.step_grads))

            state, (acc, grads) = jax.lax.scan(body, state, jax.random.split(k_steps, num_mcmc_steps))
            return state.position, jnp.mean(acc), jnp.sum(grads) + probe.init_grads

        particles, acc, grads = jax.vmap(one)(particles, jax.random.split(k_move, n))
        particles = split(particles)
        acc = jnp.mean(acc)
        n_grad = n_grad + jnp.sum(grads).astype(n_grad.dtype)  # int64 sums under x64
        h_used = jnp.asarray(h, dtype)
        if move.tunable and move.target_acceptance is not None:
            h = jnp.where(jnp.isnan(acc), h, h * jnp.exp(2.0 * (acc - move.target_acceptance)))
        loglik = loglik_all(particles)
        loglik = jnp.where(jnp.isnan(loglik), -jnp.inf, loglik)
        if callback is not None:
            callback(beta_next)
        return (particles, loglik, beta_next, log_z, h, n_grad, key), (acc, h_used, ess)

    loglik0 = loglik_all(positions)
    loglik0 = jnp.where(jnp.isnan(loglik0), -jnp.inf, loglik0).astype(dtype)
    # A kernel used as is records its step size when known, else NaN.
    h0 = jnp.asarray(jnp.nan if move.init_step_size is None else move.init_step_size, dtype)
    carry0 = (positions, loglik0, jnp.zeros((), dtype), jnp.zeros((), dtype), h0,
              jnp.zeros((), jnp.int32), key)

    if schedule is not None:
        sched = _check_schedule(schedule)
        carry, (acc, hs, ess) = jax.lax.scan(stage, carry0, sched)
        particles, loglik, _, log_z, _, n_grad, _ = carry
        temperatures = jnp.concatenate([jnp.zeros((1,), dtype), sched])
        num_stages = jnp.asarray(sched.shape[0], jnp.int32)
    else:
        nan = jnp.full((max_stages,), jnp.nan, dtype)

        def cond(c):
            (_, loglik, beta, *_), i, _ = c
            # No particle with a positive, finite likelihood: no weight can move the
            # population (invalid data, or a prior with no mass where the data are); stop.
            return (beta < 1.0) & (i < max_stages) & jnp.any(jnp.isfinite(loglik))

        def body(c):
            inner, i, (temps, accs, hs, esss) = c
            beta_next = _next_temperature(inner[1], inner[2], target_ess)
            inner, (acc, h_used, ess) = stage(inner, beta_next)
            rec = (temps.at[i + 1].set(beta_next), accs.at[i].set(acc), hs.at[i].set(h_used),
                   esss.at[i].set(ess))
            return inner, i + 1, rec

        temps0 = jnp.full((max_stages + 1,), jnp.nan, dtype).at[0].set(0.0)
        carry, num_stages, (temperatures, acc, hs, ess) = jax.lax.while_loop(
            cond, body, (carry0, jnp.zeros((), jnp.int32), (temps0, nan, nan, nan)))
        particles, loglik, _, log_z, _, n_grad, _ = carry
    return SMCResult(particles, log_z, temperatures, num_stages, acc, hs, ess, n_grad, loglik)


# ----------------------------------------------------------------------------------------
# A model's prior and likelihood, split, in unconstrained space
# ----------------------------------------------------------------------------------------
def _split_potential(model: Callable, args: tuple, kwargs: dict, sites: list[str]):
    """``(logprior_fn, loglikelihood_fn)`` over unconstrained positions ``{site: array}``.

    Latent sites' log densities plus the log-Jacobians of their transforms (built from each
    site's support as the model runs, so supports that depend on other latents work) make
    the prior; observed sites and ``numpyro.factor`` terms make the likelihood (factors are
    not part of the prior draws, so they must be tempered). Plate scales apply to both,
    as in NumPyro's potential; the sum equals ``ppl.potential(model).logdensity_fn``.
    """
    parts = _model_terms(model, args, kwargs)

    def loglik(u):
        return sum(parts(u)[1].values(), jnp.zeros(()))

    return (lambda u: parts(u)[0]), loglik


def _model_terms(model: Callable, args: tuple, kwargs: dict) -> Callable:
    """``u -> (log prior incl. log-Jacobians, {observed site: its log-likelihood term})``."""
    def parts(u):
        def sub(msg):
            if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in u:
                return biject_to(msg["fn"].support)(u[msg["name"]])
            return None

        with handlers.trace() as tr, handlers.seed(rng_seed=0), handlers.substitute(substitute_fn=sub):
            model(*args, **kwargs)
        prior = jnp.zeros(())
        terms = {}
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            term = jnp.sum(site["fn"].log_prob(site["value"]))
            if site["is_observed"]:
                if site.get("scale") is not None:
                    term = site["scale"] * term
                terms[name] = term
                continue
            t = biject_to(site["fn"].support)
            term = term + jnp.sum(t.log_abs_det_jacobian(u[name], site["value"]))
            if site.get("scale") is not None:
                term = site["scale"] * term
            prior = prior + term
        return prior, terms

    return parts


def _prior_draw(model: Callable, args: tuple, kwargs: dict, sites: list[str], key: jax.Array) -> dict:
    """One draw of the latent sites from the prior, mapped to unconstrained space."""
    tr = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    return {name: biject_to(tr[name]["fn"].support).inv(tr[name]["value"]).astype(jnp.result_type(float))
            for name in sites}


def _lapack_in_smc(method: "SMC", model: Callable, args: tuple, kwargs: dict, sites: list[str],
                   u0: dict) -> set[str]:
    """LAPACK-backed primitives in the prior draws, the target or the move (traced, not run)."""
    logprior, loglik = _split_potential(model, args, kwargs, sites)
    dim = int(ravel_pytree(u0)[0].size)
    move = _resolve_kernel(method.kernel, method.init_step_size, method.target_acceptance,
                           method.adapt_step_size, dim, where="SMC")
    key = jax.random.key(0)
    probe = _probe(move, logprior, loglik, u0, key, dim, jnp.result_type(float))
    draw = jax.make_jaxpr(functools.partial(_prior_draw, model, args, kwargs, sites))(key)
    return set(probe.lapack) | lapack_ops(draw.jaxpr)


# ----------------------------------------------------------------------------------------
# The infer method
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SMC(Method):
    """Tempered SMC as an ``inference.infer`` method: posterior draws and the log evidence.

    Args:
        kernel: the move (see the module docstring): ``"mala"`` (default), ``"ula"``,
            ``"rwm"``, a kernel factory such as :func:`inference.langevin.mala` or
            ``blackjax.mala`` (the SMC sets ``step_size``, and ``inverse_mass_matrix`` when
            the factory takes one), or a callable ``logdensity_fn -> SamplingAlgorithm``
            used as is.
        num_particles: particles per chain; must be >= ``num_samples``.
        num_mcmc_steps: move steps per particle per stage.
        target_ess: adaptive tempering's ESS fraction per stage.
        schedule: a fixed schedule of inverse temperatures instead of adaptive tempering.
        resampling, init_step_size, target_acceptance, adapt_step_size, max_stages: as in
            :func:`tempered_smc`.

    Each "chain" is an independent SMC run with its own population, prior draws and key;
    the chains run ``vmap``-ped in one compiled program. From each final (equally weighted)
    population, ``num_samples`` distinct particles are taken at random without replacement.
    The prior and likelihood are split with NumPyro's handlers: latent sites (plus their
    log-Jacobians, in unconstrained space) are the prior, observed sites and
    ``numpyro.factor`` terms the likelihood. Initial particles are prior draws, so the prior
    must be proper. A model without observed sites or factors has likelihood 1: the log
    evidence is 0 (exactly) and SMC just returns prior draws (a warning says so).
    ``infer``'s ``num_warmup`` does not apply: the tempering path is SMC's warmup.

    Invalid data: when a chain's log-likelihood is not finite at any of its initial
    particles (NaN in an observation, a value outside the support such as a negative count),
    tempering cannot start and a :class:`ppl.errors.ModelError` names the observed site(s).
    On several CPU devices (``devices=``), a model or kernel with LAPACK-backed operations
    (Cholesky, triangular solves, ...) runs on one CPU device, with a warning: JAX's CPU
    LAPACK kernels can deadlock when several CPU devices run them at once
    (:mod:`inference.smc_checks`).

    Result: ``samples`` of every latent and deterministic site (constrained), ``stats``
    ``lp`` (the log joint in unconstrained space, as NUTS's ``lp``) and ``n_grad`` (the
    chain's total gradient evaluations spread evenly over its draws, so that
    ``stats["n_grad"].sum()`` is the total cost); ``tuning``: ``log_evidence``
    (chains,), and per chain ``temperatures``, ``num_stages``, ``acceptance_rate``,
    ``step_size``, ``ess`` (see :class:`SMCResult`) and ``n_grad``.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> from inference.smc import SMC
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     with numpyro.plate("data", 3):
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), num_samples=200,
        ...                     num_chains=2, method=SMC(num_particles=400), progress=False)
        >>> r.samples["mu"].shape, r.tuning["log_evidence"].shape
        ((2, 200), (2,))
    """

    kernel: str | Callable = "mala"
    num_particles: int = 1000
    num_mcmc_steps: int = 10
    target_ess: float = 0.5
    schedule: Any = None
    resampling: str = "systematic"
    init_step_size: float | None = None
    target_acceptance: float | None = None
    adapt_step_size: bool = True
    max_stages: int = 200

    handles_discrete: ClassVar[bool] = False

    def __post_init__(self):
        _check_int("SMC", "num_particles", self.num_particles, 2)
        _check_int("SMC", "num_mcmc_steps", self.num_mcmc_steps, 1)
        _check_int("SMC", "max_stages", self.max_stages, 1)
        _check_fraction("SMC", "target_ess", self.target_ess)
        if self.target_acceptance is not None:
            _check_fraction("SMC", "target_acceptance", self.target_acceptance)
        if self.resampling not in RESAMPLING:
            raise ValueError(f"SMC(resampling={self.resampling!r}): unknown; use one of {sorted(RESAMPLING)}.")
        # Checks the kernel (name or callable) now, with a placeholder dimension.
        _resolve_kernel(self.kernel, self.init_step_size, self.target_acceptance,
                        self.adapt_step_size, 1, where="SMC")
        if self.schedule is not None:
            _check_schedule(self.schedule)

    def run(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        *,
        key: jax.Array,
        num_samples: int,
        num_chains: int,
        num_warmup: int = 0,
        progress: bool = True,
        devices: Any = None,
        trace: dict | None = None,
    ) -> tuple[dict, dict, dict, dict]:
        """Run ``num_chains`` independent SMCs: ``(samples, stats, tuning, timing)``.

        ``samples`` and ``stats`` have leading axes ``(num_chains, num_samples)``.
        ``devices`` (see :mod:`inference.sharding`): several chains are split over devices
        by chain; a single chain splits its particles over them instead.
        """
        del num_warmup  # the tempering path is SMC's warmup
        n = self.num_particles
        if num_samples > n:
            raise ValueError(
                f"SMC: num_samples={num_samples} draws per chain are taken without replacement "
                f"from num_particles={n} particles; raise num_particles to at least "
                f"{num_samples} (e.g. SMC(num_particles={num_samples})) or lower num_samples."
            )
        pot = make_potential(model, *args, **kwargs)
        trace = trace_model(model, *args, **kwargs)
        sites = list(pot.sites)
        if not sites:
            raise ModelError(f"SMC: model {model_name(model)} has no latent sites to sample.")
        has_likelihood = any(s["type"] == "sample" and s["is_observed"] for s in trace.values())
        if not has_likelihood:
            warnings.warn(
                f"SMC: model {model_name(model)} has no observed sites or factors, so its "
                "likelihood is 1: the log evidence is 0 and the draws are prior draws.",
                stacklevel=3,
            )
        try:
            u0 = _prior_draw(model, args, kwargs, sites, jax.random.key(0))
        except NotImplementedError:
            improper = [name for name, s in latent_sites(trace).items()
                        if "Improper" in type(s["fn"]).__name__]
            raise ModelError(
                f"SMC: model {model_name(model)} has a prior that cannot be sampled"
                + (f" (site(s) {improper})" if improper else "")
                + "; SMC starts from prior draws, so every latent site needs a proper prior "
                "with a sampler. Use a proper prior or a method such as NUTS."
            ) from None
        if num_chains > 1:
            chain_mesh, particle_mesh = mesh_for(devices, num_chains, what="chains",
                                                 owner="SMC"), None
        else:
            chain_mesh, particle_mesh = None, mesh_for(devices, n, what="particles", owner="SMC")
        if (chain_mesh or particle_mesh) is not None:
            ops = _lapack_in_smc(self, model, args, kwargs, sites, u0)
            chain_mesh = cpu_mesh_without_lapack(chain_mesh, ops, "chains", "SMC")
            particle_mesh = cpu_mesh_without_lapack(particle_mesh, ops, "particles", "SMC")

        # Progress: percent of the tempering path covered by the slowest chain.
        bar = ProgressBar(100, desc="SMC", enabled=progress)
        betas, lock = np.zeros(num_chains), threading.Lock()

        def report(chain, beta):  # callbacks may arrive on several threads at once
            with lock:
                betas[int(chain)] = max(betas[int(chain)], float(beta))
                b = float(betas.min())
                bar.update(int(100 * b), {"beta": b})

        # The data enter the compiled program as arguments (new data of the same shapes
        # reuse it); the progress callback goes through a relay (the program is cached).
        dyn, rebuild = split_arguments((tuple(args), dict(kwargs)))
        relay = Relay()

        def program(keys, chains, dyn):
            a, kw = rebuild(dyn)
            logprior, loglik = _split_potential(model, a, kw, sites)
            constrain = dataclasses.replace(pot, args=tuple(a), kwargs=dict(kw)).to_constrained

            def one_chain(key, chain):
                on_stage = lambda b: jax.debug.callback(relay, chain, b)  # noqa: E731
                k_init, k_smc, k_pick = jax.random.split(key, 3)
                positions = jax.vmap(functools.partial(_prior_draw, model, a, kw, sites))(
                    jax.random.split(k_init, n))
                # Which observed sites' log-likelihood is not finite at every initial particle
                # (invalid data: NaN, values outside the support); checked on the host after.
                terms = jax.vmap(lambda u: _model_terms(model, a, kw)(u)[1])(positions)
                finite = {s: jnp.isfinite(v) for s, v in terms.items()}
                total = sum(terms.values(), jnp.zeros((n,)))
                checks = {"dead": ~jnp.any(jnp.isfinite(total)),
                          "all_bad": {s: ~jnp.any(f) for s, f in finite.items()},
                          "any_bad": {s: ~jnp.all(f) for s, f in finite.items()}}
                out = tempered_smc(
                    logprior, loglik, self.kernel, positions, k_smc,
                    num_mcmc_steps=self.num_mcmc_steps, schedule=self.schedule,
                    target_ess=self.target_ess, resampling=self.resampling,
                    init_step_size=self.init_step_size, target_acceptance=self.target_acceptance,
                    adapt_step_size=self.adapt_step_size, max_stages=self.max_stages,
                    callback=on_stage if progress else None, mesh=particle_mesh,
                )
                idx = jax.random.choice(k_pick, n, (num_samples,), replace=False)
                draws = jax.tree.map(lambda v: v[idx], out.particles)
                lp = jax.vmap(logprior)(draws) + out.loglikelihood[idx]
                samples = jax.vmap(constrain)(draws)
                n_grad = jnp.full((num_samples,), out.n_grad / num_samples, jnp.result_type(float))
                tuning = {
                    "log_evidence": out.log_evidence, "temperatures": out.temperatures,
                    "num_stages": out.num_stages, "acceptance_rate": out.acceptance_rate,
                    "step_size": out.step_size, "ess": out.ess, "n_grad": out.n_grad,
                }
                return samples, {"lp": lp, "n_grad": n_grad}, tuning, checks

            return constrain_leading(jax.vmap(one_chain)(keys, chains), chain_mesh, num_chains)

        keys, chains = jax.random.split(key, num_chains), jnp.arange(num_chains)
        keys, chains = put_leading((keys, chains), chain_mesh, num_chains)
        with compiling("SMC", progress) as programs:
            compiled, relay = programs.compile(
                jax.jit(program), (keys, chains, dyn), relay=relay,
                key=("smc", model, self, static_part((tuple(args), dict(kwargs))), num_samples,
                     num_chains, progress, chain_mesh, particle_mesh))
        t1 = time.perf_counter()
        relay.target = report
        try:
            samples, stats, tuning, checks = gather(jax.block_until_ready(compiled(keys, chains, dyn)))
            jax.effects_barrier()  # every progress callback has run before the bar closes
        finally:
            relay.target = None
            bar.close()
        t2 = time.perf_counter()
        raise_if_no_likelihood(model, trace, checks, n)
        final = np.asarray(tuning["temperatures"])[np.arange(num_chains), np.asarray(tuning["num_stages"])]
        if np.any(final < 1.0):
            warnings.warn(
                f"SMC: max_stages={self.max_stages} stages ended before the inverse temperature "
                f"reached 1 (final values {np.round(final, 4).tolist()}); the draws and log "
                "evidence are not the posterior's. Raise max_stages or lower target_ess.",
                stacklevel=3,
            )
        return samples, stats, tuning, {"compile": programs.seconds, "run": t2 - t1,
                                        "devices": describe(chain_mesh or particle_mesh),
                                        "cache": programs.cache}
