"""The log density of a flow's law by the instantaneous change of variables."""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.flow_matching.checks import (
    _EVALS, Field, _check_field, _check_method, _points, _positive_int)
from inference.flow_matching.ode import _odeint_adaptive, _odeint_fixed

__all__ = ["log_density", "FlowDensity"]


class FlowDensity(NamedTuple):
    """What :func:`log_density` returns: the source points ``x0``, the data points ``x1``
    (one of them the input), ``log_prob`` = log density of the flow's law at ``x1``, and
    ``nfe`` (field-plus-divergence evaluations per point)."""

    x0: jax.Array
    x1: jax.Array
    log_prob: jax.Array
    nfe: Any


def _standard_normal_log_prob(x: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(x**2, axis=-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def log_density(
    v: Field,
    x: Any,
    steps: int,
    method: Literal["euler", "heun", "rk4", "adaptive"] = "rk4",
    *,
    given: Literal["x1", "x0"] = "x1",
    divergence: Literal["exact", "hutchinson"] = "exact",
    key: jax.Array | None = None,
    probes: int = 1,
    source_log_prob: Callable[[jax.Array], jax.Array] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
) -> FlowDensity:
    """Log density of the flow's law at data points, by the instantaneous change of variables.

    ``d/dt log p_t(x_t) = -div v(x_t, t)`` along ``dx/dt = v``, so
    ``log p1(x1) = log p0(x0) - int_0^1 div v(x_t, t) dt``. With ``given="x1"`` the points
    are data and the ODE runs backward (1 -> 0) to find ``x0``; with ``given="x0"`` they are
    source points and it runs forward, giving ``x1`` and its log density.

    Args:
        v, steps, method: the field and integrator (as in :func:`sample`).
        x: points ``(n, d)`` (or ``(d,)``), data (``given="x1"``) or source (``"x0"``).
        divergence: ``"exact"`` (trace of the Jacobian, ``d`` forward-mode passes) or
            ``"hutchinson"``: ``mean_p eps_p^T J eps_p`` with ``probes`` Rademacher vectors per
            point drawn from ``key`` and held fixed along the path, one forward-mode pass
            each. The ``x`` path does not depend on ``eps``, so the estimate is unbiased for
            the exact-divergence value of the same discretisation.
        source_log_prob: ``log p0`` on ``(n, d) -> (n,)``; default standard normal.

    Returns:
        :class:`FlowDensity` ``(x0, x1, log_prob, nfe)``.

    Example:
        >>> import math; from inference.flow_matching import gaussian_velocity
        >>> import jax, jax.numpy as jnp
        >>> v = gaussian_velocity(jnp.zeros(1), 2.0)  # N(0, 1) -> N(0, 4)
        >>> r = log_density(v, jnp.array([[0.0]]), steps=16)
        >>> round(float(r.log_prob[0]), 4), round(-0.5 * math.log(2 * math.pi * 4), 4)
        (-1.6121, -1.6121)
    """
    steps = _positive_int("log_density", "steps", steps)
    method = _check_method("log_density", method)
    if given not in ("x1", "x0"):
        raise ValueError(f"log_density: given must be 'x1' (data points) or 'x0' (source "
                         f"points); got {given!r}.")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"log_density: unknown divergence {divergence!r}; choose 'exact' or "
                         "'hutchinson'.")
    probes = _positive_int("log_density", "probes", probes)
    single = jnp.ndim(x) == 1
    pts = _points("log_density", "x", x)
    _check_field("log_density", v, pts.shape[1], pts.dtype)
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("log_density: divergence='hutchinson' needs key=jax.random.key(...) "
                             "for the probe vectors.")
        eps = jax.random.rademacher(key, (probes,) + pts.shape, pts.dtype)
    else:
        eps = None
    source_log_prob = _standard_normal_log_prob if source_log_prob is None else source_log_prob
    x0, x1, log_prob, nfe = _log_density(v, pts, eps, steps, method, given, source_log_prob,
                                         float(rtol), float(atol), int(max_steps))
    if single:
        x0, x1, log_prob = x0[0], x1[0], log_prob[0]
    return FlowDensity(x0, x1, log_prob, nfe)


@eqx.filter_jit
def _log_density(v, pts, eps, steps, method, given, source_log_prob, rtol, atol, max_steps):
    def exact(x, t):
        fx = lambda y: v(y, t)  # noqa: E731
        return fx(x), jnp.trace(jax.jacfwd(fx)(x))

    def hutchinson(x, e, t):  # e: (probes, d)
        fx = lambda y: v(y, t)  # noqa: E731
        val, jv = jax.vmap(lambda ei: jax.jvp(fx, (x,), (ei,)))(e)
        return val[0], jnp.mean(jnp.sum(e * jv, axis=-1))

    def f(y, t):
        x = y[0]
        if eps is None:
            dx, div = jax.vmap(exact, in_axes=(0, None))(x, t)
        else:
            dx, div = jax.vmap(hutchinson, in_axes=(0, 1, None))(x, eps, t)
        return dx, div

    y0 = (pts, jnp.zeros(pts.shape[0], pts.dtype))
    t0, t1 = (1.0, 0.0) if given == "x1" else (0.0, 1.0)
    if method == "adaptive":
        (x_end, acc), nfe = _odeint_adaptive(f, y0, t0, t1, steps, rtol, atol, max_steps)
    else:
        (x_end, acc), _ = _odeint_fixed(f, y0, t0, t1, steps, method)
        nfe = steps * _EVALS[method]
    # acc = int_{t0}^{t1} div dt: -int_0^1 div when running backward, +int_0^1 forward.
    if given == "x1":
        x0, x1 = x_end, pts
        log_prob = source_log_prob(x0) + acc
    else:
        x0, x1 = pts, x_end
        log_prob = source_log_prob(x0) - acc
    return x0, x1, log_prob, nfe
