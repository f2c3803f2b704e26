"""Draws of another method as points of the model's flat unconstrained space."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import ModelError
from ppl.potential import Potential
from ppl.potential import potential as make_potential

__all__ = ["unconstrained_draws"]


def unconstrained_draws(model: Callable, samples: dict, *args: Any, **kwargs: Any) -> jax.Array:
    """Constrained posterior draws of ``model(*args, **kwargs)`` as flat unconstrained points.

    ``samples`` maps each latent site to draws with leading axes, e.g. ``Result.samples`` of
    shape ``(chains, draws, *site_shape)`` or ``(draws, *site_shape)`` (deterministic sites
    are ignored). Each draw goes through the inverse of ``biject_to(support)`` of its site
    (as :meth:`ppl.Potential.to_unconstrained`) and the sites are concatenated in model
    order, the order :func:`inference.guides.flow` stacks them. Returns ``(n, D)``.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        ...     numpyro.sample("m", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> x = unconstrained_draws(model, {"s": jnp.ones((2, 3)), "m": jnp.zeros((2, 3, 2))})
        >>> x.shape, float(x[0, 0])  # log(1) = 0 for s, then m's two coordinates
        ((6, 3), 0.0)
    """
    pot = make_potential(model, *args, **kwargs)
    return _draws_for(pot, samples, "unconstrained_draws")


def _draws_for(pot: Potential, samples: Any, owner: str) -> jax.Array:
    if not isinstance(samples, dict):
        raise TypeError(f"{owner}: samples must be a dict {{site: draws}}; got "
                        f"{type(samples).__name__}.")
    missing = [n for n in pot.sites if n not in samples]
    if missing:
        raise ModelError(f"{owner}: the samples lack the latent site(s) {missing} of the model "
                         f"(latent sites {list(pot.sites)}).")
    batch = None
    for name in pot.sites:
        value = jnp.asarray(samples[name])
        shape = pot.transforms[name].forward_shape(pot.sites[name])
        lead = value.shape[: value.ndim - len(shape)]
        if tuple(value.shape[value.ndim - len(shape):]) != tuple(shape) or not lead:
            raise ValueError(f"{owner}: draws of site '{name}' have shape {value.shape}; expected "
                             f"(..., *{tuple(shape)}) with at least one leading draw axis.")
        batch = lead if batch is None else batch
        if lead != batch:
            raise ValueError(f"{owner}: sites have different leading (draw) shapes: {batch} and "
                             f"{lead} for '{name}'.")
    n = math.prod(batch)
    flat_values = {name: jnp.reshape(jnp.asarray(samples[name]),
                                     (n,) + tuple(pot.transforms[name].forward_shape(shape)))
                   for name, shape in pot.sites.items()}
    to_u = jax.jit(jax.vmap(lambda v: pot.ravel(pot.to_unconstrained(v))))
    return to_u(flat_values)


def _as_points(owner: str, draws: Any, dim: int | None = None) -> jax.Array:
    """Draws as an ``(n, D)`` float array, checked on the host (no compiled programs)."""
    x = np.asarray(draws)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim < 2:
        raise ValueError(f"{owner}: draws must have shape (n, D) or (chains, draws, D); got "
                         f"{x.shape}.")
    x = x.reshape((-1, x.shape[-1]))
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{owner}: draws have dimension {x.shape[1]}, but the model's "
                         f"unconstrained space (or the flow) has dimension {dim}.")
    finite = np.all(np.isfinite(x), axis=1)
    if not finite.all():
        raise ValueError(f"{owner}: {int((~finite).sum())} of {x.shape[0]} draws are not finite "
                         "(NaN/inf on the unconstrained scale; a constrained draw on its "
                         "support's boundary?).")
    return jnp.asarray(x)
