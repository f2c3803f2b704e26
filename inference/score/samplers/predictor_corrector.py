"""Euler-Maruyama predictor with Langevin corrector steps (the signal-to-noise step rule)."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.score.predictions import _check_prediction
from inference.score.processes import Process, _check_process
from inference.score.samplers.common import (
    ScoreSamples, _check_steps, _eps, _finish, _initial, _model, timesteps)

__all__ = ["predictor_corrector"]


def _snr_step(score, z, snr):
    n = score.shape[0]
    gnorm = jnp.mean(jnp.linalg.norm(score.reshape(n, -1), axis=1))
    znorm = jnp.mean(jnp.linalg.norm(z.reshape(n, -1), axis=1))
    return 2.0 * (snr * znorm / jnp.maximum(gnorm, 1e-12)) ** 2


@eqx.filter_jit
def _pc_run(fn, proc, prediction, key, x, steps, corrector_steps, snr, schedule, return_path):
    _model("predictor_corrector", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule)
    keys = jax.random.split(key, (steps, corrector_steps + 1))
    last = jnp.arange(steps) == steps - 1

    def score_at(x, t):
        return -_eps(fn, proc, prediction, x, t) / proc.marginal(t)[1]

    def body(x, inp):
        (t, t_next), ks, is_last = inp
        h = t - t_next
        g = proc.diffusion(t)
        mean = x - h * (proc.drift(x, t) - g**2 * score_at(x, t))
        x = mean + jnp.where(is_last, 0.0, g * jnp.sqrt(h)) * jax.random.normal(ks[0], x.shape)

        def correct(x, k):  # Langevin on p_{t_next}, step from the target signal-to-noise
            sc = score_at(x, t_next)
            kz, kn = jax.random.split(k)
            z = jax.random.normal(kz, x.shape, x.dtype)
            eps_l = _snr_step(sc, z, snr)
            return x + eps_l * sc + jnp.sqrt(2.0 * eps_l) * z, None

        x, _ = jax.lax.scan(correct, x, ks[1:])
        return x, (x if return_path else None)

    pairs = jnp.stack([ts[:-1], ts[1:]], 1)
    x_end, path = jax.lax.scan(body, x, (pairs, keys, last))
    return _finish(x_end, path, x, return_path)


def predictor_corrector(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                        corrector_steps: int = 1, snr: float = 0.1, prediction: str = "score",
                        schedule: str = "uniform", return_path: bool = False) -> ScoreSamples:
    r"""Euler-Maruyama predictor, then ``corrector_steps`` Langevin corrector steps at the new time.

    The corrector step is ``x + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``
    (batch means of the per-draw norms), so the drift move ``e |score|`` is ``snr`` times
    the noise move ``sqrt(2 e) |z|`` whatever the noise level (Song et al. 2021). NFE = ``steps (1 + corrector_steps)``.

    Example:
        >>> from inference.score import VP
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> predictor_corrector(g.score_fn(p), p, jax.random.key(0), (32, 2), 20).nfe
        40
    """
    proc = _check_process("predictor_corrector", proc)
    steps = _check_steps("predictor_corrector", steps)
    corrector_steps = _check_steps("predictor_corrector", corrector_steps, "corrector_steps")
    if not snr > 0:
        raise ValueError(f"predictor_corrector: snr must be > 0; got {snr}.")
    k0, k1 = jax.random.split(key)
    x = _initial("predictor_corrector", proc, k0, x_T)
    _check_prediction("predictor_corrector", prediction)
    out, path = _pc_run(fn, proc, prediction, k1, x, steps, corrector_steps, float(snr),
                        schedule, return_path)
    return ScoreSamples(out, steps * (1 + corrector_steps), path)
