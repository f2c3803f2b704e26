"""Integrating ``dx/dt = v(x, t)``: fixed-step Euler, Heun, RK4, or adaptive (diffrax)."""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.flow_matching.checks import (
    _EVALS, Field, _check_field, _check_method, _points, _positive_int)

__all__ = ["sample"]


def _tree_axpy(a, x, y):
    """``y + a * x`` leafwise."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _rk_step(f, method: str, y, t, h):
    if method == "euler":
        return _tree_axpy(h, f(y, t), y)
    if method == "heun":
        k1 = f(y, t)
        k2 = f(_tree_axpy(h, k1, y), t + h)
        return jax.tree.map(lambda yi, a, b: yi + 0.5 * h * (a + b), y, k1, k2)
    k1 = f(y, t)
    k2 = f(_tree_axpy(0.5 * h, k1, y), t + 0.5 * h)
    k3 = f(_tree_axpy(0.5 * h, k2, y), t + 0.5 * h)
    k4 = f(_tree_axpy(h, k3, y), t + h)
    return jax.tree.map(lambda yi, a, b, c, d: yi + h / 6 * (a + 2 * b + 2 * c + d), y, k1, k2, k3, k4)


def _odeint_fixed(f, y0, t0: float, t1: float, steps: int, method: str, save_path: bool = False):
    """Fixed-step integration of ``dy/dt = f(y, t)``; the states at every grid time when
    ``save_path`` (stacked, including ``y0``)."""
    h = (t1 - t0) / steps

    def body(y, k):
        y = _rk_step(f, method, y, t0 + k * h, h)
        return y, (y if save_path else None)

    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    y, path = jax.lax.scan(body, y0, jnp.arange(steps, dtype=dtype))
    if save_path:
        path = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, path)
    return y, path


def _odeint_adaptive(f, y0, t0: float, t1: float, steps: int, rtol: float, atol: float,
                     max_steps: int):
    try:
        import diffrax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("method='adaptive' needs diffrax (pip install diffrax); the fixed-step "
                          "methods 'euler', 'heun' and 'rk4' need nothing else.") from err
    term = diffrax.ODETerm(lambda t, y, args: f(y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0, t1, dt0=(t1 - t0) / steps, y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
    )
    y = jax.tree.map(lambda a: a[-1], sol.ys)
    # Tsit5 has 7 stages, the last reused by the next step (FSAL): 6 new evaluations per
    # attempted step (accepted or rejected) plus the first.
    nfe = 6 * sol.stats["num_steps"] + 1
    return y, nfe


def _batch_field(v: Field):
    return lambda x, t: jax.vmap(v, in_axes=(0, None))(x, t)


@eqx.filter_jit
def _sample(v, x0, steps, method, t0, t1, rtol, atol, max_steps):
    f = _batch_field(v)
    if method == "adaptive":
        return _odeint_adaptive(f, x0, t0, t1, steps, rtol, atol, max_steps)
    return _odeint_fixed(f, x0, t0, t1, steps, method)[0], steps * _EVALS[method]


def sample(
    v: Field,
    x0: Any,
    steps: int,
    method: Literal["euler", "heun", "rk4", "adaptive"] = "euler",
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
) -> tuple[jax.Array, Any]:
    """Integrate ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` (default 0 -> 1) from ``x0``.

    Args:
        v: the velocity field ``v(x, t)`` on one point ``(d,)`` and a scalar ``t``.
        x0: starting points ``(n, d)`` (or one point ``(d,)``).
        steps: number of steps (``>= 1``); for ``"adaptive"``, the first step is
            ``(t1 - t0) / steps`` and the controller takes it from there.
        method: ``"euler"`` (1 evaluation per step), ``"heun"`` (2), ``"rk4"`` (4) or
            ``"adaptive"`` (diffrax Tsit5, error control ``rtol``/``atol``, at most
            ``max_steps`` steps).

    Returns:
        ``(x1, nfe)``: the end points (shape of ``x0``) and the number of field evaluations
        per point (an int; a JAX scalar for ``"adaptive"``, which decides it at run time).

    Example:
        >>> import jax.numpy as jnp
        >>> x1, nfe = sample(lambda x, t: -x, jnp.ones((3, 1)), steps=10, method="heun")
        >>> nfe, round(float(x1[0, 0]), 2)  # exp(-1) = 0.368
        (20, 0.37)
    """
    steps = _positive_int("sample", "steps", steps)
    method = _check_method("sample", method)
    single = jnp.ndim(x0) == 1
    x = _points("sample", "x0", x0)
    _check_field("sample", v, x.shape[1], x.dtype)
    x1, nfe = _sample(v, x, steps, method, float(t0), float(t1), float(rtol), float(atol),
                      int(max_steps))
    return (x1[0] if single else x1), nfe
