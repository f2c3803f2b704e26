"""Checks and splits of what users pass in: counts, keys, and a model's data arguments.

One place for the rules every entry point shares (``infer``, ``fit``, the methods), so
that the same mistake gets the same message everywhere.

Data arguments are split into *dynamic* leaves (arrays, and Python floats) that a compiled
program takes as inputs, and *static* leaves (Python ints such as a plate size, strings,
``None``, callables) that are baked into the program and so are part of its cache key.
Array-likes that are not arrays (a pandas Series, an xarray DataArray: anything with
``__array__``) are converted to NumPy arrays first.

Example:
    >>> import jax.numpy as jnp
    >>> dyn, rebuild = split_arguments((8, jnp.ones(3), None))
    >>> len(dyn), rebuild([jnp.zeros(3)])[0]
    (1, 8)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["positive_int", "check_int", "check_number", "as_key", "is_dynamic", "split_arguments", "as_arrays",
           "static_part", "CONCRETE_ERRORS"]

#: Errors of a model that uses the *values* of its data in Python (``if y.sum() > 0``,
#: ``np.asarray(x)``, a support size read from the data): such a model is compiled with
#: its data as constants instead of as program inputs.
CONCRETE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerBoolConversionError,
)


def positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` (bools are refused).

    Example:
        >>> positive_int("num_chains", 4)
        4
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < (0 if allow_zero else 1):
        need = "a non-negative int" if allow_zero else "a positive int"
        raise ValueError(f"{name} must be {need}; got {value!r} ({type(value).__name__}).")
    return int(value)


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, or ``ValueError("owner(name=value): must be ...")``.

    The form every function's own arguments use (``positive_int`` is ``infer``'s and
    ``fit``'s keyword form). Bools are refused.

    Example:
        >>> check_int("train", "steps", 100)
        100
        >>> check_int("train", "steps", 0)
        Traceback (most recent call last):
        ...
        ValueError: train(steps=0): must be a positive int.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        need = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{owner}({name}={value!r}): must be {need}.")
    return int(value)


def check_number(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``), else a ``ValueError``
    in the form of :func:`check_int`.

    Concrete scalar arrays (``jnp.asarray(0.1)``) count as numbers.

    Example:
        >>> check_number("fit", "alpha", 0.0, allow_zero=True)
        0.0
    """
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.ndim(value) == 0 and (
            np.issubdtype(np.asarray(value).dtype, np.number)
            and not np.issubdtype(np.asarray(value).dtype, np.complexfloating)):
        value = np.asarray(value).item()  # a concrete scalar array, e.g. jnp.asarray(0.1)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        need = "a finite number >= 0" if allow_zero else "a positive finite number"
        raise ValueError(f"{owner}({name}={value!r}): must be {need}.")
    return float(value)


def as_key(key: Any) -> jax.Array:
    """A typed JAX key from ``None`` (seed 0), an int seed, a typed key or a raw ``uint32[2]``.

    A batch of keys (e.g. ``jax.random.split(key, 2)``) is refused with a message that says
    how to take one of them.

    Example:
        >>> as_key(3).shape
        ()
    """
    if key is None:
        return jax.random.key(0)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return key
        raise TypeError(
            f"key must be a single key; got a batch of keys of shape {key.shape} (e.g. from "
            "jax.random.split(key, n)). Pass one of them, such as keys[0]."
        )
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == jnp.uint32:
        if key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
        if key.ndim == 2 and key.shape[-1] == 2:
            raise TypeError(
                f"key must be a single key; got a batch of raw keys of shape {key.shape} "
                "(e.g. from jax.random.split(PRNGKey(...), n)). Pass one of them, such as "
                "keys[0]."
            )
    raise TypeError(f"key must be a jax.random.key(...) or an int seed; got {key!r}.")


def is_dynamic(x: Any) -> bool:
    """Whether a data leaf becomes an input of a compiled program (arrays and floats)."""
    return (isinstance(x, (jax.Array, np.ndarray, np.generic, float, complex))
            and not isinstance(x, (bool, np.bool_)))


def _array_like(x: Any) -> bool:
    return (hasattr(x, "__array__") and not isinstance(x, (jax.Array, np.ndarray, np.generic))
            and not isinstance(x, (list, tuple, dict)) and not callable(x))


def _numeric_list(x: Any) -> bool:
    if not isinstance(x, list) or not x:
        return False
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError):
        return False
    return arr.dtype.kind in "biuf" and arr.ndim >= 1


def as_arrays(tree: Any) -> Any:
    """``tree`` with array-likes that are not arrays (pandas, xarray) and lists of numbers
    (``[1.0, 2.0]``, nested lists of equal lengths) converted to NumPy arrays.

    Example:
        >>> import numpy as np
        >>> class Series:                      # stands in for pandas.Series
        ...     def __array__(self, dtype=None, copy=None): return np.arange(3.0)
        >>> as_arrays({"y": Series()})["y"].tolist()
        [0.0, 1.0, 2.0]
        >>> as_arrays(([1.0, 2.0], 3))[0].shape
        (2,)
    """
    convert = lambda x: _array_like(x) or _numeric_list(x)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: np.asarray(x) if convert(x) else x, tree,
                                  is_leaf=convert)


def split_arguments(args: Any) -> tuple[list, Callable[[list], Any]]:
    """``(dynamic, rebuild)``: the array (and float) leaves of ``args``, and the inverse map.

    ``rebuild(dynamic)`` gives ``args`` back with the other leaves (ints such as a plate
    size, strings, ``None``) fixed, so a compiled function can take ``dynamic`` as traced
    inputs and keep the rest static. ``args`` may be any pytree (a tuple of positional
    arguments, or ``(args, kwargs)``).

    Example:
        >>> import jax.numpy as jnp
        >>> dyn, rebuild = split_arguments((8, jnp.ones(3), None))
        >>> len(dyn), rebuild([jnp.zeros(3)])[0]
        (1, 8)
    """
    leaves, tree = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    dynamic = [is_dynamic(x) for x in leaves]
    static = [x for x, d in zip(leaves, dynamic) if not d]

    def rebuild(dyn: list) -> Any:
        dyn_it, static_it = iter(dyn), iter(static)
        return jax.tree_util.tree_unflatten(
            tree, [next(dyn_it) if d else next(static_it) for d in dynamic]
        )

    return [x for x, d in zip(leaves, dynamic) if d], rebuild


def static_part(args: Any) -> tuple:
    """What of ``args`` a compiled program bakes in: the tree structure and static leaves.

    Together with the shapes and dtypes of the dynamic leaves it decides the program.
    """
    leaves, tree = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    return tree, tuple(x for x in leaves if not is_dynamic(x))
