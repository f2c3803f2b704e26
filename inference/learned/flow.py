"""A normalizing flow as a distribution on ``R^D`` (draws with their densities, log_prob)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from inference.flows import FlowSpec
from inference.learned.checks import _std_normal_log_prob
from inference.learned.whitening import _Affine, _affine_parts, _check_affine

__all__ = ["Flow"]


@dataclass(frozen=True, eq=False)
class Flow(_Affine):
    """A normalizing flow as a distribution on ``R^D``: ``x = loc + L T_theta(z)``, ``z ~ N(0, I)``.

    Args:
        spec: the flow's structure (:class:`inference.flows.FlowSpec`).
        theta: its weights, shape ``(spec.size,)``.
        loc, scale_tril: a fixed affine map applied after the flow (the whitening of the
            draws it was fitted to); ``None`` for none (a VI flow guide's flow).
        base_scale: the base is ``N(0, base_scale^2 I)``: above 1 it fattens the tails of a
            fitted flow (its training used 1), which bounds the importance weights ``p / q``
            where the fit's tails are too light, at some cost in acceptance.

    Methods take one point ``(D,)`` or a batch ``(..., D)``. ``sample_and_log_prob`` runs the
    flow forward only (one pass per layer for every kind but ``"maf"``), ``log_prob`` inverts
    it (one pass per layer for every kind but ``"iaf"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> spec = FlowSpec("affine_coupling", dim=2, layers=1, width=4)
        >>> q = Flow(spec, spec.init(jax.random.key(0)), loc=jnp.array([1.0, 2.0]))
        >>> x, lq = q.sample_and_log_prob(jax.random.key(1), 5)
        >>> x.shape, bool(jnp.allclose(lq, q.log_prob(x), atol=1e-5))
        ((5, 2), True)
    """

    spec: FlowSpec
    theta: jax.Array
    loc: jax.Array | None = None
    scale_tril: jax.Array | None = None
    base_scale: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.base_scale, (int, float)) and not isinstance(self.base_scale, bool)
                and self.base_scale > 0):
            raise ValueError(f"Flow(base_scale={self.base_scale!r}): must be a positive number.")
        if not isinstance(self.spec, FlowSpec):
            raise TypeError(f"Flow(spec={self.spec!r}): must be an inference.flows.FlowSpec.")
        theta = jnp.asarray(self.theta)
        if theta.shape != (self.spec.size,):
            raise ValueError(f"Flow: theta has shape {theta.shape}; the spec needs "
                             f"({self.spec.size},).")
        loc, tril = _check_affine("Flow", self.spec.dim, self.loc, self.scale_tril)
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "loc", loc)
        object.__setattr__(self, "scale_tril", tril)

    @property
    def dim(self) -> int:
        """The dimension ``D``."""
        return self.spec.dim

    def sample_and_log_prob(self, key: jax.Array, n: int | None = None
                            ) -> tuple[jax.Array, jax.Array]:
        """``n`` draws ``(n, D)`` (one ``(D,)`` when ``n`` is None) and their log densities."""
        shape = () if n is None else (int(n),)
        return _flow_sample(self.spec, shape, self.theta, self.loc, self.scale_tril,
                            float(self.base_scale), key)

    def sample(self, key: jax.Array, n: int | None = None) -> jax.Array:
        """``n`` draws ``(n, D)``, or one ``(D,)`` when ``n`` is None."""
        return self.sample_and_log_prob(key, n)[0]

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log density at ``x`` of shape ``(..., D)``; shape ``x.shape[:-1]``."""
        return _flow_log_prob(self.spec, self.theta, self.loc, self.scale_tril,
                              float(self.base_scale), jnp.asarray(x))


def _base_log_prob(z: jax.Array, base_scale: float) -> jax.Array:
    return _std_normal_log_prob(z / base_scale) - z.shape[-1] * math.log(base_scale)


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _flow_sample(spec, shape, theta, loc, tril, base_scale, key):
    affine = _affine_parts(loc, tril)
    z = base_scale * jax.random.normal(key, shape + (spec.dim,), theta.dtype)
    flat = z.reshape((-1, spec.dim))
    y, log_det = jax.vmap(lambda e: spec.forward(theta, e))(flat)
    x = affine._to_x(y).reshape(z.shape)
    log_q = _base_log_prob(flat, base_scale) - log_det - affine._log_det_scale()
    return x, log_q.reshape(shape)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _flow_log_prob(spec, theta, loc, tril, base_scale, x):
    affine = _affine_parts(loc, tril)
    if x.shape[-1:] != (spec.dim,):
        raise ValueError(f"Flow.log_prob: points must have shape (..., {spec.dim}); got {x.shape}.")
    flat = affine._to_y(x.reshape((-1, spec.dim)))
    z, log_det = jax.vmap(lambda y: spec.inverse(theta, y))(flat)
    lp = _base_log_prob(z, base_scale) + log_det - affine._log_det_scale()
    return lp.reshape(x.shape[:-1])
