"""The probability-flow ODE by Euler (DDIM) or Heun steps in the scaled variables."""

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

__all__ = ["pf_ode"]


@eqx.filter_jit
def _ode_run(fn, proc, prediction, x, steps, schedule, t_start, method, return_path):
    _model("pf_ode", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule, t_start)

    def body(x, tt):
        t, t_next = tt
        a, s = proc.marginal(t)
        a2, s2 = proc.marginal(t_next)
        r, r2 = s / a, s2 / a2  # the scaled noise level s/a, decreasing
        xbar = x / a
        d = _eps(fn, proc, prediction, x, t)  # d xbar / d r = eps
        xbar2 = xbar + (r2 - r) * d
        if method == "heun":
            d2 = _eps(fn, proc, prediction, a2 * xbar2, t_next)
            xbar2 = xbar + (r2 - r) * 0.5 * (d + d2)
        y = a2 * xbar2
        return y, (y if return_path else None)

    x_end, path = jax.lax.scan(body, x, jnp.stack([ts[:-1], ts[1:]], 1))
    return _finish(x_end, path, x, return_path)


def pf_ode(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
           method: str = "heun", prediction: str = "score", schedule: str = "edm",
           start: GaussianStart | None = None, return_path: bool = False) -> ScoreSamples:
    r"""The probability-flow ODE ``dx/dt = f x - g^2 score / 2``, by Euler or Heun.

    Integrated in ``xbar = x / a`` against ``r = s / a``, where the ODE reads
    ``d xbar / d r = eps(x, t)`` exactly (the same trajectories; Euler there is DDIM and
    exact for a point mass). Deterministic given ``x_T`` (``key`` only draws ``x_T`` when a
    shape is given). NFE = ``steps`` (Euler) or ``2 steps`` (Heun).

    Example:
        >>> from inference.score import VP
        >>> import jax, jax.numpy as jnp
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> xT = p.prior_sample(jax.random.key(0), (64, 2))
        >>> a = pf_ode(g.score_fn(p), p, jax.random.key(1), xT, 10)
        >>> b = pf_ode(g.score_fn(p), p, jax.random.key(2), xT, 10)
        >>> bool(jnp.all(a.x == b.x)), a.nfe
        (True, 20)
    """
    proc = _check_process("pf_ode", proc)
    steps = _check_steps("pf_ode", steps)
    if method not in ("euler", "heun"):
        raise ValueError(f"pf_ode: unknown method {method!r}; expected 'euler' or 'heun'.")
    x = _initial("pf_ode", proc, key, x_T)
    _check_prediction("pf_ode", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _ode_run(fn, proc, prediction, x, steps, schedule, t_start, method, return_path)
    return ScoreSamples(out, steps * (2 if method == "heun" else 1), path)
