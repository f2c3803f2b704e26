"""Annealed Langevin on an unnormalised density along a tempered or smoothed path."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.score.samplers.common import ScoreSamples, _check_steps, _langevin_step

__all__ = ["sample_target"]


@eqx.filter_jit
def _target_run(logdensity_fn, key, x, levels, steps_per_level, step_size, path, particles,
                reference_scale):
    grad_lp = jax.vmap(jax.grad(logdensity_fn))
    lp = jax.vmap(logdensity_fn)
    keys = jax.random.split(key, (levels.shape[0], steps_per_level))

    def tempered_score(x, beta, _k):
        return beta * grad_lp(x) - (1.0 - beta) * x / reference_scale**2

    def smoothed_score(x, sigma, k):
        # grad log (pi * N(0, sigma^2)) (x) = E_w[grad log pi(x + sigma z)], w ~ pi(x + sigma z),
        # by self-normalised importance sampling with `particles` draws of z per point.
        z = jax.random.normal(k, (particles,) + x.shape, x.dtype)
        z = z.at[0].set(0.0) if particles > 1 else z * 0.0  # include the point itself
        y = x[None] + sigma * z
        flat = y.reshape((-1,) + x.shape[1:])
        logw = lp(flat).reshape(particles, x.shape[0])
        g = grad_lp(flat).reshape(y.shape)
        w = jax.nn.softmax(jnp.where(jnp.isfinite(logw), logw, -jnp.inf), axis=0)
        return jnp.einsum("pn,pn...->n...", w, g)

    score = tempered_score if path == "tempered" else smoothed_score

    def level(x, inp):
        lv, ks = inp
        step = step_size if path == "tempered" else step_size * (1.0 + lv**2)

        def move(x, k):
            ks_, kn = jax.random.split(k)
            return _langevin_step(score(x, lv, ks_), x, kn, step), None

        x, _ = jax.lax.scan(move, x, ks)
        return x, None

    x, _ = jax.lax.scan(level, x, (levels, keys))
    return x


def sample_target(target: Any, key: jax.Array, num_samples: int, *, path: str = "tempered",
                  levels: int = 20, steps_per_level: int = 50, step_size: float = 0.05,
                  schedule: jax.Array | None = None, particles: int = 8,
                  reference_scale: float = 1.0, max_sigma: float = 2.0,
                  x0: jax.Array | None = None) -> ScoreSamples:
    r"""Annealed Langevin on an unnormalised density along a path ending at the target.

    ``target``: a flat ``logdensity_fn(x)`` of one ``(d,)`` position (then give ``x0``) or a
    ``ppl.potential(...)`` (flat unconstrained positions; map back with
    ``jax.vmap(pot.unravel)`` and ``pot.to_constrained``).

    * ``path="tempered"``: ``log p_beta = beta log pi + (1 - beta) log N(0, reference_scale^2 I)``,
      ``beta`` from the ``schedule`` (default geometric ``1e-2 .. 1``), exact scores.
    * ``path="smoothed"``: ``p_sigma = pi * N(0, sigma^2 I)``, ``sigma`` decreasing from
      ``max_sigma`` to 0 (default geometric, then 0); the score ``E_w[grad log pi(x + sigma z)]``
      is a self-normalised estimate with ``particles`` draws (biased for finite particles,
      exact at ``sigma = 0``), so NFE per step = ``particles`` gradient evaluations.

    ULA steps of ``step_size`` (times ``1 + sigma^2`` on the smoothed path), ``steps_per_level``
    per level. Start: ``x0`` or ``N(0, reference_scale^2 I)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> def model():
        ...     ppl.sample("m", dist.Normal(3.0, 0.5))
        >>> out = sample_target(ppl.potential(model), jax.random.key(0), 500, levels=10)
        >>> round(float(out.x.mean()), 1), out.nfe
        (3.0, 500)
    """
    if path not in ("tempered", "smoothed"):
        raise ValueError(f"sample_target: unknown path {path!r}; expected 'tempered' or 'smoothed'.")
    levels = _check_steps("sample_target", levels, "levels")
    steps_per_level = _check_steps("sample_target", steps_per_level, "steps_per_level")
    particles = _check_steps("sample_target", particles, "particles")
    num_samples = _check_steps("sample_target", num_samples, "num_samples")
    if not step_size > 0:
        raise ValueError(f"sample_target: step_size must be > 0; got {step_size}.")
    if hasattr(target, "flat_logdensity_fn") and hasattr(target, "dimension"):
        logdensity_fn, dim = target.flat_logdensity_fn, target.dimension
    elif callable(target):
        if x0 is None:
            raise ValueError("sample_target: with a plain logdensity_fn give x0 (num_samples, d) "
                             "or pass a ppl.potential (its dimension is known).")
        logdensity_fn, dim = target, None
    else:
        raise TypeError(f"sample_target: target must be a ppl.potential or a callable; got "
                        f"{type(target).__name__}.")
    k0, k1 = jax.random.split(key)
    if x0 is None:
        x = reference_scale * jax.random.normal(k0, (num_samples, dim))
    else:
        x = jnp.asarray(x0, jnp.float32)
        if x.ndim != 2 or x.shape[0] != num_samples or (dim is not None and x.shape[1] != dim):
            raise ValueError(f"sample_target: x0 must have shape ({num_samples}, "
                             f"{dim if dim is not None else 'd'}); got {x.shape}.")
    if schedule is None:
        if path == "tempered":
            schedule = jnp.geomspace(1e-2, 1.0, levels)
        else:
            schedule = jnp.concatenate([jnp.geomspace(max_sigma, 1e-2, levels - 1), jnp.zeros(1)]) \
                if levels > 1 else jnp.zeros(1)
    schedule = jnp.asarray(schedule, jnp.float32)
    if schedule.shape != (levels,):
        raise ValueError(f"sample_target: schedule must have shape ({levels},); got {schedule.shape}.")
    out = _target_run(logdensity_fn, k1, x, schedule, steps_per_level, float(step_size), path,
                      particles, float(reference_scale))
    per_step = 1 if path == "tempered" else particles
    return ScoreSamples(out, levels * steps_per_level * per_step, None)
