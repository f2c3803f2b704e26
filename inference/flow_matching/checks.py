"""The names flow matching understands (paths, integrators) and its input checks."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
from inference.arguments import check_int

__all__ = ["PATHS", "METHODS", "Field"]

#: Probability paths understood by :func:`cfm_loss`.
PATHS = ("straight", "interpolant")
#: ODE integrators understood by :func:`sample` and :func:`log_density`.
METHODS = ("euler", "heun", "rk4", "adaptive")
#: Field evaluations per step of each fixed-step integrator.
_EVALS = {"euler": 1, "heun": 2, "rk4": 4}
_DEFAULT_SIGMA = {"straight": 0.0, "interpolant": 0.5}

Field = Callable[[jax.Array, jax.Array], jax.Array]


_positive_int = check_int  # the library's one rule (inference.arguments)


def _check_method(fn: str, method: str, allowed: tuple[str, ...] = METHODS) -> str:
    if method not in allowed:
        raise ValueError(f"{fn}: unknown method {method!r}; choose one of {', '.join(allowed)}.")
    return method


def _check_path(fn: str, path: str, sigma: Any) -> tuple[str, float]:
    if path not in PATHS:
        raise ValueError(f"{fn}: unknown path {path!r}; choose one of {', '.join(PATHS)}.")
    if sigma is None:
        sigma = _DEFAULT_SIGMA[path]
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"{fn}: sigma must be a number >= 0 (the noise scale); got {sigma!r}.")
    return path, float(sigma)


def _points(fn: str, name: str, x: Any) -> jax.Array:
    """``x`` as an ``(n, d)`` float array (a single point ``(d,)`` becomes ``(1, d)``)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have shape (n, d) or (d,); got {x.shape}.")
    return x


def _check_field(fn: str, v: Field, d: int, dtype) -> None:
    """The field takes one point ``(d,)`` and a scalar time and returns ``(d,)``."""
    point, time = jax.ShapeDtypeStruct((d,), dtype), jax.ShapeDtypeStruct((), dtype)
    field_dim = getattr(v, "dim", None)
    if isinstance(field_dim, int) and field_dim != d:
        raise ValueError(
            f"{fn}: the velocity field is for points of dimension {field_dim}, but the points "
            f"have dimension {d} (shape (n, {d})); pass draws of shape (n, {field_dim}) or "
            f"build the field with dim={d}."
        )
    try:
        out = jax.eval_shape(v, point, time)
    except Exception as err:  # the field's own error, reported with the shapes involved
        raise ValueError(
            f"{fn}: the velocity field cannot be called as v(x, t) with x of shape ({d},) "
            f"and a scalar t: {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != (d,):
        raise ValueError(
            f"{fn}: v(x, t) must return the velocity at x, shape ({d},); got "
            f"{getattr(out, 'shape', out)} for x of shape ({d},)."
        )
