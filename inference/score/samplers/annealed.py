"""Annealed Langevin dynamics over a decreasing sequence of noise levels."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax

from inference.score.predictions import _check_prediction
from inference.score.processes import Process, _check_process
from inference.score.samplers.common import (
    ScoreSamples, _check_steps, _eps, _finish, _initial, _langevin_step, _model, timesteps)

__all__ = ["annealed_langevin"]


@eqx.filter_jit
def _ald_run(fn, proc, prediction, key, x, steps, steps_per_level, step_size, schedule,
             return_path):
    _model("annealed_langevin", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule)[1:]  # the levels, ending at t_min
    keys = jax.random.split(key, (steps, steps_per_level))

    def level(x, inp):
        t, ks = inp
        s = proc.marginal(t)[1]
        step = step_size * s**2

        def move(x, k):
            sc = -_eps(fn, proc, prediction, x, t) / s
            return _langevin_step(sc, x, k, step), None

        x, _ = jax.lax.scan(move, x, ks)
        return x, (x if return_path else None)

    x_end, path = jax.lax.scan(level, x, (ts, keys))
    return _finish(x_end, path, x, return_path)


def annealed_langevin(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                      steps_per_level: int = 10, step_size: float = 0.05,
                      prediction: str = "score", schedule: str = "uniform",
                      return_path: bool = False) -> ScoreSamples:
    r"""Annealed Langevin dynamics: ``steps`` noise levels ``t_1 > ... > t_min``, at each
    ``steps_per_level`` unadjusted Langevin steps on ``p_t`` with step ``step_size s(t)^2``.

    The step shrinks with the noise scale as in Song & Ermon (2019) (``eps sigma_i^2 /
    sigma_L^2`` there); the last level is at ``t_min``. NFE = ``steps * steps_per_level``.

    Example:
        >>> from inference.score import VE
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VE()
        >>> annealed_langevin(g.score_fn(p), p, jax.random.key(0), (32, 2), 20, steps_per_level=5).nfe
        100
    """
    proc = _check_process("annealed_langevin", proc)
    steps = _check_steps("annealed_langevin", steps)
    steps_per_level = _check_steps("annealed_langevin", steps_per_level, "steps_per_level")
    if not step_size > 0:
        raise ValueError(f"annealed_langevin: step_size must be > 0; got {step_size}.")
    k0, k1 = jax.random.split(key)
    x = _initial("annealed_langevin", proc, k0, x_T)
    _check_prediction("annealed_langevin", prediction)
    out, path = _ald_run(fn, proc, prediction, k1, x, steps, steps_per_level, float(step_size),
                         schedule, return_path)
    return ScoreSamples(out, steps * steps_per_level, path)
