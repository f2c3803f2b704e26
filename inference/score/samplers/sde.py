"""Euler-Maruyama on the reverse-time SDE."""

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

__all__ = ["euler_maruyama"]


@eqx.filter_jit
def _em_run(fn, proc, prediction, key, x, steps, schedule, t_start, return_path):
    _model("euler_maruyama", fn, proc, prediction, x)  # at trace time only
    ts = timesteps(proc, steps, schedule, t_start)
    keys = jax.random.split(key, steps)
    last = jnp.arange(steps) == steps - 1

    def body(x, inp):
        (t, t_next), k, is_last = inp
        h = t - t_next
        g = proc.diffusion(t)
        score = -_eps(fn, proc, prediction, x, t) / proc.marginal(t)[1]
        mean = x - h * (proc.drift(x, t) - g**2 * score)
        noise = jnp.where(is_last, 0.0, g * jnp.sqrt(h)) * jax.random.normal(k, x.shape, x.dtype)
        y = mean + noise
        return y, (y if return_path else None)

    pairs = jnp.stack([ts[:-1], ts[1:]], 1)
    x_end, path = jax.lax.scan(body, x, (pairs, keys, last))
    return _finish(x_end, path, x, return_path)


def euler_maruyama(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                   prediction: str = "score", schedule: str = "uniform",
                   start: GaussianStart | None = None, return_path: bool = False) -> ScoreSamples:
    r"""Euler-Maruyama on the reverse SDE ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g dW-bar``.

    ``fn(x, t)`` (batched; predicting ``prediction``), ``x_T`` an array or a shape (then
    drawn from the prior with ``key``), ``steps`` steps on the ``schedule`` grid from
    ``t_max`` (or ``start.t``) to ``t_min``; the last step adds no noise. NFE = ``steps``.

    Example:
        >>> from inference.score import VP
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> out = euler_maruyama(g.score_fn(p), p, jax.random.key(0), (100, 2), steps=50)
        >>> out.x.shape, out.nfe
        ((100, 2), 50)
    """
    proc = _check_process("euler_maruyama", proc)
    steps = _check_steps("euler_maruyama", steps)
    k0, k1 = jax.random.split(key)
    x = _initial("euler_maruyama", proc, k0, x_T)
    _check_prediction("euler_maruyama", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _em_run(fn, proc, prediction, k1, x, steps, schedule, t_start, return_path)
    return ScoreSamples(out, steps, path)
