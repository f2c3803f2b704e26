"""The tempered SMC algorithm on a prior and a likelihood (:func:`tempered_smc`)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from inference.sharding import constrain_leading
from inference.smc.checks import cpu_mesh_without_lapack

from inference.smc.moves import _info_field, _probe, _resolve_kernel, _step_grads
from inference.smc.resampling import RESAMPLING, _ess_fraction, _increment_weights, _next_temperature, _normalized


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
    stepper = tempering(
        logprior_fn, loglikelihood_fn, kernel, positions, num_mcmc_steps=num_mcmc_steps,
        schedule=schedule, target_ess=target_ess, resampling=resampling,
        init_step_size=init_step_size, target_acceptance=target_acceptance,
        adapt_step_size=adapt_step_size, max_stages=max_stages, callback=callback, mesh=mesh)
    state = stepper.advance(stepper.start(positions, key), stepper.num_records)
    return stepper.result(state)


class TemperingState(NamedTuple):
    """Where one tempered SMC stands between stages (what :meth:`Tempering.advance` carries;
    a checkpoint stores it). ``stage`` stages are done; the records have one entry per
    possible stage (``temperatures`` one more, starting at 0)."""

    particles: Any
    loglikelihood: jax.Array
    beta: jax.Array
    log_evidence: jax.Array
    step_size: jax.Array  # the (relative) step size of the next stage's moves
    n_grad: jax.Array
    key: jax.Array
    stage: jax.Array
    temperatures: jax.Array
    acceptance_rate: jax.Array
    step_sizes: jax.Array
    ess: jax.Array


class Tempering(NamedTuple):
    """Tempered SMC cut into stages, so that a host loop can run it a few stages at a time
    (Ctrl-C between calls, checkpoints): ``start``, then ``advance`` until ``done``, then
    ``result``. Built by :func:`tempering`; every function is pure and jittable, and a stage
    computes the same whatever the stages are grouped into, so the draws do not depend on
    how the host cuts the run."""

    start: Callable  # (positions, key) -> TemperingState
    advance: Callable  # (state, until) -> state after stages up to index ``until``
    done: Callable  # state -> bool: no stage left to run
    result: Callable  # state -> SMCResult
    move: Callable  # (particles, beta, step_size, key) -> (particles, acceptance, n_grad)
    num_records: int  # stages at most (max_stages, or the fixed schedule's length)


def tempering(
    logprior_fn: Callable,
    loglikelihood_fn: Callable,
    kernel: str | Callable,
    positions: Any,
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
) -> Tempering:
    """:func:`tempered_smc` as a :class:`Tempering` (same arguments; ``positions`` gives
    the particles' number and shapes, and may be abstract).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(0), (200,))
        >>> t = tempering(lambda x: -0.5 * x**2, lambda x: -2.0 * x**2, "rwm", x0,
        ...               num_mcmc_steps=2, schedule=[0.5, 1.0])
        >>> state = t.advance(t.start(x0, jax.random.key(1)), 1)   # one stage of two
        >>> int(state.stage), bool(t.done(state)), bool(t.done(t.advance(state, 2)))
        (1, False, True)
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
                   jax.random.key(0), dim, dtype)
    mesh = cpu_mesh_without_lapack(mesh, probe.lapack, "particles", where)
    split = lambda p: constrain_leading(p, mesh, n)  # noqa: E731
    sched = None if schedule is None else _check_schedule(schedule)
    num_records = max_stages if sched is None else int(sched.shape[0])

    def move_particles(particles, beta, h, var, key):
        """``num_mcmc_steps`` moves of every particle at inverse temperature ``beta``:
        ``(particles, mean acceptance, gradients)``."""

        def tempered(p):
            return logprior_fn(p) + beta * loglikelihood_fn(p)

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

        particles, acc, grads = jax.vmap(one)(particles, jax.random.split(key, n))
        return split(particles), jnp.mean(acc), jnp.sum(grads)

    def spread(particles, w):
        """The population's weighted variance per coordinate (the moves' preconditioner)."""
        x = flat(particles)
        mean = w @ x
        return jnp.maximum(w @ (x - mean) ** 2, 1e-12)

    def stage(carry, beta_next):
        particles, loglik, beta, log_z, h, n_grad, key = carry
        key, k_res, k_move = jax.random.split(key, 3)
        log_w = _increment_weights(beta_next - beta, loglik)
        log_z = log_z + jax.nn.logsumexp(log_w) - math.log(n)
        ess = _ess_fraction(log_w)
        w = _normalized(log_w)
        # The population's spread at the new temperature, from the weighted particles.
        var = spread(particles, w)
        idx = resample_fn(k_res, w, n)
        particles = split(jax.tree.map(lambda v: v[idx], particles))
        particles, acc, grads = move_particles(particles, beta_next, h, var, k_move)
        n_grad = n_grad + grads.astype(n_grad.dtype)  # int64 sums under x64
        h_used = jnp.asarray(h, dtype)
        if move.tunable and move.target_acceptance is not None:
            h = jnp.where(jnp.isnan(acc), h, h * jnp.exp(2.0 * (acc - move.target_acceptance)))
        loglik = loglik_all(particles)
        loglik = jnp.where(jnp.isnan(loglik), -jnp.inf, loglik)
        if callback is not None:
            callback(beta_next)
        return (particles, loglik, beta_next, log_z, h, n_grad, key), (acc, h_used, ess)

    def start(positions, key):
        positions = split(jax.tree.map(jnp.asarray, positions))
        loglik0 = loglik_all(positions)
        loglik0 = jnp.where(jnp.isnan(loglik0), -jnp.inf, loglik0).astype(dtype)
        # A kernel used as is records its step size when known, else NaN.
        h0 = jnp.asarray(jnp.nan if move.init_step_size is None else move.init_step_size, dtype)
        nan = jnp.full((num_records,), jnp.nan, dtype)
        temps = (jnp.full((num_records + 1,), jnp.nan, dtype).at[0].set(0.0) if sched is None
                 else jnp.concatenate([jnp.zeros((1,), dtype), sched.astype(dtype)]))
        return TemperingState(positions, loglik0, jnp.zeros((), dtype), jnp.zeros((), dtype), h0,
                              jnp.zeros((), jnp.int32), key, jnp.zeros((), jnp.int32), temps,
                              nan, nan, nan)

    def done(c):
        if sched is not None:
            return c.stage >= num_records
        # No particle with a positive, finite likelihood: no weight can move the population
        # (invalid data, or a prior with no mass where the data are); stop.
        return ~((c.beta < 1.0) & (c.stage < num_records) & jnp.any(jnp.isfinite(c.loglikelihood)))

    def advance(c, until):
        def body(c):
            i = c.stage
            beta_next = (_next_temperature(c.loglikelihood, c.beta, target_ess) if sched is None
                         else sched[i].astype(dtype))
            inner = (c.particles, c.loglikelihood, c.beta, c.log_evidence, c.step_size, c.n_grad,
                     c.key)
            (particles, loglik, beta, log_z, h, n_grad, key), (acc, h_used, ess) = stage(
                inner, beta_next)
            return TemperingState(
                particles, loglik, beta, log_z, h, n_grad, key, i + 1,
                c.temperatures.at[i + 1].set(beta_next), c.acceptance_rate.at[i].set(acc),
                c.step_sizes.at[i].set(h_used), c.ess.at[i].set(ess))

        return jax.lax.while_loop(lambda c: ~done(c) & (c.stage < until), body, c)

    def result(c):
        return SMCResult(c.particles, c.log_evidence, c.temperatures, c.stage, c.acceptance_rate,
                         c.step_sizes, c.ess, c.n_grad, c.loglikelihood)

    def move_at(particles, beta, h, key):
        w = jnp.full((n,), 1.0 / n, dtype)
        return move_particles(split(particles), jnp.asarray(beta, dtype), h, spread(particles, w), key)

    return Tempering(start, advance, done, result, move_at, num_records)
