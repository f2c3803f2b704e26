"""The model's densities, decoding and sampling."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


from models.latent_flow.model import LatentFlowModel, _as_key, _positive_int


def _check_points(name: str, owner: str, a: Any, dim: int, what: str) -> jax.Array:
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{owner}: {name} has shape {a.shape}; expected (n, {dim}) ({what}).")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    return a


def _check_data(model: LatentFlowModel, x: Any, owner: str, name: str = "x") -> jax.Array:
    x = _check_points(name, owner, x, model.data_dim, "a batch of data points")
    if not isinstance(x, jax.core.Tracer):  # concrete: check on the host (numpy)
        xn = np.asarray(x)
        if not np.all(np.isfinite(xn)):
            raise ValueError(f"{owner}: {name} has non-finite values.")
        if model.likelihood == "bernoulli" and not np.all((xn >= 0) & (xn <= 1)):
            raise ValueError(f"{owner}: {name} has values outside [0, 1]; the bernoulli "
                             "likelihood needs binary (or [0, 1]) data.")
    return x


@eqx.filter_jit
def _log_prior_jit(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    return _log_prior(model, z)


def _log_prior(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    return jax.vmap(lambda zi: model.spec.log_prob(model.flow_theta, zi))(z)


def _log_likelihood(model: LatentFlowModel, x: jax.Array, z: jax.Array) -> jax.Array:
    out = jax.vmap(model.generator)(z)
    if model.likelihood == "bernoulli":
        return jnp.sum(x * out - jax.nn.softplus(out), axis=-1)
    sd = model.noise_sd
    d = x.shape[-1]
    return (-0.5 * jnp.sum((x - out) ** 2, axis=-1) / sd**2
            - d * (math.log(sd) + 0.5 * math.log(2 * math.pi)))


def log_prior(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    """``log q_alpha(z_i)`` for each row of ``z`` (shape ``(n, d)``), shape ``(n,)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> round(float(log_prior(m, jnp.zeros((1, 2)))[0]), 4)  # fresh prior: N(0, I)
        -1.8379
    """
    return _log_prior_jit(model, _check_points("z", "latent_flow.log_prior", z, model.latent_dim,
                                           "a batch of latents"))


def log_likelihood(model: LatentFlowModel, x: jax.Array, z: jax.Array) -> jax.Array:
    """``log p_beta(x_i | z_i)`` for each row (``x`` ``(n, D)``, ``z`` ``(n, d)``), ``(n,)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, noise_sd=1.0)
        >>> z = jnp.zeros((1, 2)); x = decode(m, z)
        >>> round(float(log_likelihood(m, x, z)[0]), 4)  # -3/2 log(2 pi): x at the mean
        -2.7568
    """
    owner = "latent_flow.log_likelihood"
    z = _check_points("z", owner, z, model.latent_dim, "a batch of latents")
    x = _check_data(model, x, owner)
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but z has {z.shape[0]}.")
    return eqx.filter_jit(_log_likelihood)(model, x, z)


def decode(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    """The mean of ``x | z`` for each row of ``z``: ``g(z)`` (gaussian) or
    ``sigmoid(g(z))`` (bernoulli), shape ``(n, D)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, likelihood="bernoulli")
        >>> bool(jnp.all((decode(m, jnp.ones((2, 2))) > 0) & (decode(m, jnp.ones((2, 2))) < 1)))
        True
    """
    z = _check_points("z", "latent_flow.decode", z, model.latent_dim, "a batch of latents")
    return _decode(model, z)


@eqx.filter_jit
def _decode(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    out = jax.vmap(model.generator)(z)
    return jax.nn.sigmoid(out) if model.likelihood == "bernoulli" else out


def _prior_draws(model: LatentFlowModel, key: jax.Array, n: int) -> jax.Array:
    e = jax.random.normal(key, (n, model.latent_dim))
    return jax.vmap(lambda ei: model.spec.forward(model.flow_theta, ei)[0])(e)


_prior_draws_jit = eqx.filter_jit(_prior_draws)


def sample_latents(model: LatentFlowModel, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws of the prior, ``z = T_alpha(e)``, ``e ~ N(0, I)``: shape ``(n, d)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> sample_latents(m, jax.random.key(1), 7).shape
        (7, 2)
    """
    n = _positive_int("n", n, "latent_flow.sample_latents")
    return _prior_draws_jit(model, _as_key(key, "latent_flow.sample_latents"), n)


def sample(model: LatentFlowModel, key: jax.Array, n: int, noise: bool = False) -> jax.Array:
    """``n`` new data points with no MCMC: ``z ~ q_alpha`` (one flow pass), then the mean of
    ``x | z`` (:func:`decode`), or with ``noise=True`` a draw of ``x | z`` (Gaussian noise
    added, or Bernoulli pixels). Shape ``(n, D)``.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, likelihood="bernoulli")
        >>> x = sample(m, jax.random.key(1), 4, noise=True)
        >>> x.shape, bool(jnp.all((x == 0) | (x == 1)))
        ((4, 3), True)
    """
    n = _positive_int("n", n, "latent_flow.sample")
    k_z, k_x = jax.random.split(_as_key(key, "latent_flow.sample"))
    mean = _decode(model, _prior_draws_jit(model, k_z, n))
    if not noise:
        return mean
    if model.likelihood == "bernoulli":
        return jax.random.bernoulli(k_x, mean).astype(mean.dtype)
    return mean + model.noise_sd * jax.random.normal(k_x, mean.shape, mean.dtype)
