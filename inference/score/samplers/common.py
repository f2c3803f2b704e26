"""What every reverse-time sampler shares: the time grid, the output type, the input checks."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from inference.score.predictions import _check_prediction, _to_noise
from inference.score.processes import Process

__all__ = ["SCHEDULES", "timesteps", "ScoreSamples"]

SCHEDULES = ("uniform", "logsnr", "edm")


def timesteps(proc: Process, steps: int, schedule: str = "uniform", t_start=None,
              rho: float = 7.0) -> jax.Array:
    """``steps + 1`` decreasing times from ``t_start`` (default ``t_max``) to ``t_min``.

    ``"uniform"`` in ``t``; ``"logsnr"`` uniform in ``lambda = log(a/s)``; ``"edm"`` uniform
    in ``(s/a)^(1/rho)`` (Karras et al. 2022), dense at low noise.

    Example:
        >>> from inference.score import Linear
        >>> [round(float(t), 3) for t in timesteps(Linear(t_min=0.1, t_max=0.9), 2)]
        [0.9, 0.5, 0.1]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"timesteps: unknown schedule {schedule!r}; expected one of {SCHEDULES}.")
    t0 = jnp.asarray(proc.t_max if t_start is None else t_start, jnp.float32)
    t1 = jnp.asarray(max(proc.t_min, 1e-5), jnp.float32)
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if schedule == "uniform":
        ts = t0 + u * (t1 - t0)
    else:
        l0, l1 = proc.log_snr(t0), proc.log_snr(t1)
        if schedule == "logsnr":
            lam = l0 + u * (l1 - l0)
        else:
            r0, r1 = jnp.exp(-l0 / rho), jnp.exp(-l1 / rho)
            lam = -rho * jnp.log(r0 + u * (r1 - r0))
        ts = proc.t_from_log_snr(lam)
    return ts.at[0].set(t0).at[-1].set(t1)


class ScoreSamples(NamedTuple):
    """A sampler's output: draws ``x``, the number of function (network) evaluations ``nfe``
    and, with ``return_path=True``, the path ``(steps + 1, *x.shape)`` (else ``None``)."""

    x: jax.Array
    nfe: int
    path: jax.Array | None = None


def _check_steps(fn: str, steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int,)) and not (
            hasattr(steps, "__index__") and not hasattr(steps, "shape")):
        raise TypeError(f"{fn}: {name} must be a Python int; got {type(steps).__name__}.")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"{fn}: {name} must be >= 1; got {steps}.")
    return steps


def _initial(fn_name: str, proc: Process, key, x_or_shape) -> jax.Array:
    if isinstance(x_or_shape, (tuple, list)) and all(isinstance(v, int) for v in x_or_shape):
        if len(x_or_shape) < 1:
            raise ValueError(f"{fn_name}: shape must be (batch, ...); got {tuple(x_or_shape)}.")
        return proc.prior_sample(key, x_or_shape)
    x = jnp.asarray(x_or_shape)
    if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn_name}: expected x_T (a float array (batch, ...)) or a shape "
                         f"tuple; got {type(x_or_shape).__name__} {getattr(x, 'shape', '')}.")
    return x


def _model(fn_name: str, fn: Callable, proc: Process, prediction: str, x: jax.Array):
    """Check fn's output shape once (abstractly) and return eps(x, t), x0(x, t) helpers."""
    _check_prediction(fn_name, prediction)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jnp.float32(proc.t_max))
    if out.shape != x.shape:
        raise ValueError(f"{fn_name}: fn(x, t) returned shape {out.shape} for x of shape "
                         f"{x.shape}; it must act on the whole batch and return x's shape "
                         "(wrap a per-example network with inference.score.batched).")


def _eps(fn, proc, prediction, x, t):
    return _to_noise(fn(x, t), x, t, proc, prediction)


def _finish(x, path, x0, return_path):
    if return_path:
        path = jnp.concatenate([x0[None], path])
    return x, path


def _langevin_step(score, x, k, step):
    return x + step * score + jnp.sqrt(2.0 * step) * jax.random.normal(k, x.shape, x.dtype)
