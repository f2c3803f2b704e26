"""The two losses: the energy's contrastive maximum likelihood and the flow's on revised draws."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


from models.coopflow.model import CoopFlow, _check_model, _points
from models.coopflow.sampling import _flow_log_prob_jit


def energy_loss(energy: Callable[[jax.Array], jax.Array], x_data: jax.Array,
                x_samples: jax.Array, alpha: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """``(loss, cd)``: the EBM's maximum-likelihood loss on data against model samples.

    ``cd = mean E(x_data) - mean E(x_samples)``, whose gradient in the energy's weights is
    the contrastive-divergence estimate of the negative log-likelihood's gradient (the
    samples count as draws from ``p_theta``; they are not differentiated through), and
    ``loss = cd + alpha (mean E(x_data)^2 + mean E(x_samples)^2)``. Descending it lowers
    the energy of the data and raises that of the samples.

    Example:
        >>> import jax.numpy as jnp
        >>> quad = lambda x: 0.5 * jnp.sum(x**2)
        >>> loss, cd = energy_loss(quad, jnp.zeros((2, 1)), jnp.full((2, 1), 2.0), alpha=0.0)
        >>> float(loss), float(cd)
        (-2.0, -2.0)
    """
    x_samples = jax.lax.stop_gradient(x_samples)
    e_data = jax.vmap(energy)(x_data)
    e_samples = jax.vmap(energy)(x_samples)
    cd = jnp.mean(e_data) - jnp.mean(e_samples)
    return cd + alpha * (jnp.mean(e_data**2) + jnp.mean(e_samples**2)), cd


def flow_loss(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``-mean log q_alpha(x)`` over a batch ``x`` (``(n, dim)``): the flow's
    maximum-likelihood loss, differentiable in ``model.theta``.

    Example:
        >>> from models.coopflow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> round(float(flow_loss(m, jnp.zeros((3, 2)))), 4)  # log(2 pi)
        1.8379
    """
    _check_model("flow_loss", model)
    x = _points("flow_loss", "x", x, model.dim)
    return -jnp.mean(_flow_log_prob_jit(model.spec, model.theta, x))
