"""The only place the language touches JAX's private internals (``jax._src``).

``ppl.sim`` gives every ``jax.vmap``-ped particle inside an objective its own random key,
even when the vmapped function ignores its argument. That needs three things JAX does not
expose publicly: the trace a value is being computed under, the ``jax.vmap`` traces between
two traces, and a batched value (one key per element) made on one of those traces. They are
wrapped here, small and pinned by ``tests/test_jax_internals.py``, so that a JAX release that
moves them breaks one module and one test file, not the language.

Public replacement, when JAX offers none of this: pass the particle index (or a split key)
explicitly as a ``jax.vmap`` argument, i.e. make ``ppl.sim`` take its keys from its caller
instead of from a handler; that changes the objective-writing API, so it waits for a reason.

Example:
    >>> import jax, jax.numpy as jnp
    >>> def f(x):
    ...     level = current_trace()
    ...     return jnp.float32(is_vmap(level))
    >>> jax.vmap(f)(jnp.zeros(3)).tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

from jax._src import core as _core
from jax._src.interpreters import batching as _batching

__all__ = ["current_trace", "is_vmap", "parent", "axis_size", "batched"]


def current_trace() -> Any:
    """The trace JAX is computing under now (the eval trace outside any transformation)."""
    return _core.trace_ctx.trace


def is_vmap(trace: Any) -> bool:
    """Whether ``trace`` is a ``jax.vmap`` level."""
    return isinstance(trace, _batching.BatchTrace)


def parent(trace: Any) -> Any:
    """The trace a ``jax.vmap`` level was opened under."""
    return trace.parent_trace


def axis_size(trace: Any) -> int:
    """The size of the mapped axis of a ``jax.vmap`` level."""
    return trace.axis_data.size


def batched(trace: Any, values: Any) -> Any:
    """A value of the ``jax.vmap`` level ``trace`` whose element ``i`` is ``values[i]``."""
    return _batching.BatchTracer(trace, values, 0)
