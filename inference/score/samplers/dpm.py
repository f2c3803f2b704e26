"""A multistep exponential-integrator solver of the probability-flow ODE (DPM-Solver++ style)."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.score.predictions import _check_prediction
from inference.score.processes import Process, _check_process
from inference.score.samplers.common import (
    ScoreSamples, _check_steps, _eps, _finish, _initial, _model, timesteps)
from inference.score.samplers.gaussian_start import GaussianStart, _start

__all__ = ["dpm_solver"]


@eqx.filter_jit
def _dpm_run(fn, proc, prediction, x, steps, order, schedule, t_start, lower_order_final,
             return_path):
    _model("dpm_solver", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule, t_start)
    lam = proc.log_snr(ts)
    h_all = lam[1:] - lam[:-1]

    def body(carry, i):
        x, d_prev, d_prev2 = carry  # data predictions at the two previous grid points
        t, t_next = ts[i], ts[i + 1]
        a, s = proc.marginal(t)
        a2, s2 = proc.marginal(t_next)
        h = h_all[i]
        d0 = (x - s * _eps(fn, proc, prediction, x, t)) / a
        phi1 = jnp.expm1(-h)  # e^{-h} - 1
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        base = (s2 / s) * x - a2 * phi1 * d0
        h1 = h_all[jnp.maximum(i - 1, 0)]
        h2 = h_all[jnp.maximum(i - 2, 0)]
        slope1 = (d0 - d_prev) / h1  # backward differences in lambda
        slope2 = (d_prev - d_prev2) / h2
        curv = (slope1 - slope2) / (h1 + h2)  # half the second derivative
        deriv = slope1 + curv * h1  # first derivative at lambda_i of the quadratic
        x2 = base + a2 * h * phi2 * slope1
        x3 = base + a2 * h * phi2 * deriv - a2 * h**2 * phi3 * 2.0 * curv
        # effective order: warm up (i + 1 points known), optionally lower at the end
        eff = jnp.minimum(order, i + 1)
        if lower_order_final and steps < 15:
            eff = jnp.minimum(eff, steps - i)
        y = jnp.where(eff >= 3, x3, jnp.where(eff == 2, x2, base))
        return (y, d0, d_prev), (y if return_path else None)

    (x_end, _, _), path = jax.lax.scan(body, (x, jnp.zeros_like(x), jnp.zeros_like(x)),
                                       jnp.arange(steps))
    return _finish(x_end, path, x, return_path)


def dpm_solver(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
               order: int = 2, prediction: str = "score", schedule: str = "logsnr",
               lower_order_final: bool = True, start: GaussianStart | None = None,
               return_path: bool = False) -> ScoreSamples:
    r"""Multistep exponential integrator of the probability-flow ODE (DPM-Solver++ style).

    In ``lambda = log(a/s)`` the ODE's exact solution from ``t`` to ``t'`` is
    ``x' = (s'/s) x + s' int e^lambda x0_hat(lambda) dlambda``; the solver integrates the
    linear part exactly and a polynomial in ``lambda`` through the last ``order`` data
    predictions (``order`` 1: DDIM; 2 and 3: multistep, the first steps of lower order, and
    with ``lower_order_final`` the last ones too when ``steps < 15``). One evaluation per step:
    NFE = ``steps``. Deterministic given ``x_T``.

    Example:
        >>> from inference.score import VE
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VE()
        >>> dpm_solver(g.score_fn(p), p, jax.random.key(0), (32, 2), 8, order=3).nfe
        8
    """
    proc = _check_process("dpm_solver", proc)
    steps = _check_steps("dpm_solver", steps)
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver: order must be 1, 2 or 3; got {order!r}.")
    x = _initial("dpm_solver", proc, key, x_T)
    _check_prediction("dpm_solver", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _dpm_run(fn, proc, prediction, x, steps, int(order), schedule, t_start,
                         bool(lower_order_final), return_path)
    return ScoreSamples(out, steps, path)
