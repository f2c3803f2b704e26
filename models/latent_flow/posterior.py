"""Posterior inference of the latents by short-run Langevin (:func:`infer_latents`)."""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp

from inference.mcmc import langevin

from models.latent_flow.densities import _check_data, _log_likelihood, _log_prior, _prior_draws_jit, decode
from models.latent_flow.model import LatentFlowModel, _as_key, _positive_float, _positive_int


def _infer(model: LatentFlowModel, x: jax.Array, z0: jax.Array, key: jax.Array, steps: int,
           step_size: float) -> jax.Array:
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    model = eqx.combine(jax.lax.stop_gradient(arrays), static)
    x = jax.lax.stop_gradient(x)

    def logdensity(z):  # chains are independent: the sum's gradient is each one's
        return jnp.sum(_log_prior(model, z) + _log_likelihood(model, x, z))

    zk = langevin.flow(logdensity, z0, key, steps, step_size, noise=True, checkpoint=False)
    return jax.lax.stop_gradient(zk)


_infer_jit = eqx.filter_jit(_infer)


def infer_latents(
    model: LatentFlowModel,
    x: jax.Array,
    key: jax.Array,
    steps: int = 20,
    step_size: float = 0.01,
    start: str | jax.Array = "prior",
) -> jax.Array:
    """Short-run Langevin posterior latents: one chain per row of ``x``, ``steps`` ULA steps
    ``z <- z + h grad log p(z | x) + sqrt(2 h) xi`` with ``h = step_size``.

    Args:
        model: the model (held fixed; the result carries no gradient to it).
        x: data, shape ``(n, D)``.
        key: PRNG key (the initial draws and the Langevin noise).
        steps: Langevin steps ``K`` (0: the initial points).
        step_size: ``h``; keep it below ``2 /`` the curvature of ``log p(z | x)``.
        start: where chains start: ``"prior"`` (draws of ``q_alpha``), ``"base"`` (draws of
            the flow's base ``N(0, I)``), or an array ``(n, d)`` (e.g. persistent chains).

    Returns:
        ``z_K``, shape ``(n, d)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> z = infer_latents(m, jnp.zeros((5, 3)), jax.random.key(1), steps=10)
        >>> z.shape
        (5, 2)
    """
    owner = "latent_flow.infer_latents"
    x = _check_data(model, x, owner)
    steps = _positive_int("steps", steps, owner, allow_zero=True)
    step_size = _positive_float("step_size", step_size, owner)
    k0, k = jax.random.split(_as_key(key, owner))
    n = x.shape[0]
    if isinstance(start, str):
        if start == "prior":
            z0 = _prior_draws_jit(model, k0, n)
        elif start == "base":
            z0 = jax.random.normal(k0, (n, model.latent_dim))
        else:
            raise ValueError(f"{owner}(start={start!r}): use 'prior', 'base' or an array of "
                             f"shape ({n}, {model.latent_dim}).")
    else:
        z0 = jnp.asarray(start)
        if z0.shape != (n, model.latent_dim):
            raise ValueError(f"{owner}: start has shape {z0.shape}; expected "
                             f"({n}, {model.latent_dim}) (one start per row of x).")
    return _infer_jit(model, x, z0, k, steps, step_size)


def reconstruct(model: LatentFlowModel, x: jax.Array, key: jax.Array, steps: int = 20,
                step_size: float = 0.01, start: str | jax.Array = "prior") -> jax.Array:
    """:func:`decode` of :func:`infer_latents`: the reconstruction of each row of ``x``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> reconstruct(m, jnp.zeros((5, 3)), jax.random.key(1), steps=10).shape
        (5, 3)
    """
    return decode(model, infer_latents(model, x, key, steps, step_size, start))
