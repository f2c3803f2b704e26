"""Energies, flow densities and draws, and the Langevin revision of flow draws."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.mcmc import langevin
from inference.flows import FlowSpec

from models.coopflow.model import CoopFlow, _check_model, _int, _points


def energies(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``E_theta(x)`` for a batch ``x`` of shape ``(n, dim)``; shape ``(n,)``.

    Example:
        >>> from models.coopflow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> energies(m, jnp.zeros((5, 2))).shape
        (5,)
    """
    _check_model("energies", model)
    return _energies(model.energy, _points("energies", "x", x, model.dim))


@eqx.filter_jit
def _energies(energy: Any, x: jax.Array) -> jax.Array:
    return jax.vmap(energy)(x)


def flow_sample(model: CoopFlow, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws ``T_alpha(z)``, ``z ~ N(0, I)`` of the flow alone; shape ``(n, dim)``.

    Example:
        >>> from models.coopflow import init
        >>> import jax
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> flow_sample(m, jax.random.key(1), 4).shape
        (4, 2)
    """
    _check_model("flow_sample", model)
    n = _int("flow_sample", "n", n)
    return _flow_sample_jit(model, key, n)


def _flow_sample(model: CoopFlow, key: jax.Array, n: int) -> jax.Array:
    z = jax.random.normal(key, (n, model.dim))
    return jax.vmap(lambda zi: model.spec.forward(model.theta, zi)[0])(z)


def flow_log_prob(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``log q_alpha(x)`` for a batch ``x`` of shape ``(n, dim)``; shape ``(n,)``.

    Example:
        >>> from models.coopflow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> round(float(flow_log_prob(m, jnp.zeros((1, 2)))[0]), 4)  # fresh flow: N(0, I)
        -1.8379
    """
    _check_model("flow_log_prob", model)
    x = _points("flow_log_prob", "x", x, model.dim)
    return _flow_log_prob_jit(model.spec, model.theta, x)


def _flow_log_prob(spec: FlowSpec, theta: jax.Array, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda xi: spec.log_prob(theta, xi))(x)


def _revise(model: CoopFlow, key: jax.Array, x0: jax.Array, steps: int) -> jax.Array:
    energy, t = model.energy, model.temperature
    # ULA on -E / T with step h T: x - h grad E + sqrt(2 h T) xi (T = 0: no noise, step h).
    scale = 1.0 / t if t > 0 else 1.0
    logdensity = lambda x: -scale * jnp.sum(jax.vmap(energy)(x))  # noqa: E731 (points independent)
    return langevin.flow(logdensity, x0, key, steps=steps, step_size=model.step_size / scale,
                         noise=t > 0, checkpoint=False)


def revise(model: CoopFlow, key: jax.Array, x0: jax.Array, steps: int | None = None) -> jax.Array:
    """Short-run Langevin on ``-E_theta`` from ``x0`` (``(n, dim)``): ``steps`` ULA steps
    (default ``model.langevin_steps``) of size ``model.step_size``.

    Example:
        >>> from models.coopflow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> bool(jnp.all(revise(m, jax.random.key(1), jnp.ones((3, 2)), steps=0) == 1.0))
        True
    """
    _check_model("revise", model)
    steps = model.langevin_steps if steps is None else _int("revise", "steps", steps, 0)
    return _revise_jit(model, key, _points("revise", "x0", x0, model.dim), steps)


def sample(model: CoopFlow, key: jax.Array, n: int, langevin_steps: int | None = None
           ) -> jax.Array:
    """``n`` CoopFlow samples: flow draws revised by ``langevin_steps`` Langevin steps
    (default ``model.langevin_steps``; ``0`` gives the flow alone). Shape ``(n, dim)``.

    Example:
        >>> from models.coopflow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> k = jax.random.key(1)
        >>> flow_only = sample(m, k, 4, langevin_steps=0)  # the flow uses split(k)[0]
        >>> bool(jnp.all(flow_only == flow_sample(m, jax.random.split(k)[0], 4)))
        True
    """
    _check_model("sample", model)
    n = _int("sample", "n", n)
    steps = model.langevin_steps if langevin_steps is None else _int(
        "sample", "langevin_steps", langevin_steps, 0)
    return _sample_jit(model, key, n, steps)


@eqx.filter_jit
def _sample_jit(model: CoopFlow, key: jax.Array, n: int, steps: int) -> jax.Array:
    k_flow, k_run = jax.random.split(key)
    return _revise(model, k_run, _flow_sample(model, k_flow, n), steps)


_flow_sample_jit = eqx.filter_jit(_flow_sample)
_flow_log_prob_jit = eqx.filter_jit(_flow_log_prob)
_revise_jit = eqx.filter_jit(_revise)
