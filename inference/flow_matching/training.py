"""Training a velocity field on the flow-matching loss (:func:`train`)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import optax

from inference.flow_matching.checks import _check_field, _check_path, _points, _positive_int
from inference.flow_matching.loss import _cfm_loss
from inference.progress import ProgressBar
from inference.training import minimize

__all__ = ["train", "TrainResult"]


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained ``field`` and the per-step ``losses``."""

    field: Any
    losses: jax.Array


Sampler = Callable[[jax.Array, int], jax.Array]


def train(
    v: eqx.Module,
    key: jax.Array,
    data: Any,
    *,
    x0: Any = None,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    path: str = "straight",
    sigma: float | None = None,
    progress: bool | ProgressBar = False,
    updates: int = 20,
    on_interrupt: str = "warn",
) -> TrainResult:
    """Train the velocity field ``v`` (an Equinox module) on :func:`cfm_loss`.

    Args:
        v: the initial field; its inexact-array leaves are trained.
        key: a ``jax.random.key``; step ``i`` uses ``fold_in(key, i)``.
        data: the target draws ``x1``: an array ``(n, d)`` (minibatches drawn with
            replacement) or a sampler ``data(key, batch_size) -> (batch_size, d)``
            (fresh draws each step, e.g. :mod:`models.toy2d`).
        x0: the source: ``None`` (fresh ``N(0, I)`` draws each step, independent of
            ``x1``), a sampler ``x0(key, batch_size)``, or an array ``(n, d)`` paired row
            by row with an array ``data`` (fixed couplings, as :func:`reflow` uses).
        steps: optimizer steps; batch_size: pairs per step.
        optimizer: an optax transformation; default ``optax.adam(1e-3)``.
        path, sigma: the probability path of :func:`cfm_loss`.
        progress: show a progress bar (or a :class:`~inference.progress.ProgressBar`).
        updates: how many host round trips (bar updates, finiteness checks) per run.
        on_interrupt: what Ctrl-C does (:func:`inference.training.run_steps`): return the
            field reached with a warning (``"warn"``), or propagate (``"raise"``).

    Returns:
        :class:`TrainResult` ``(field, losses)``, ``losses`` of shape ``(steps,)``.

    Raises:
        inference.NonFiniteError: (a ``FloatingPointError``) at the first step whose loss,
            gradient or update is not finite, naming the field's leaf, with the last good
            parameters (``err.params``, a pytree of the field's arrays).

    Example:
        >>> from inference.flow_matching import VelocityMLP
        >>> import jax, jax.numpy as jnp
        >>> target = lambda k, n: 2.0 + 0.5 * jax.random.normal(k, (n, 1))
        >>> v = VelocityMLP(1, jax.random.key(0), width=32, depth=2)
        >>> r = train(v, jax.random.key(1), target, steps=300, batch_size=128)
        >>> bool(r.losses[-50:].mean() < r.losses[:50].mean())
        True
    """
    path, sigma = _check_path("train", path, sigma)
    steps = _positive_int("train", "steps", steps)
    batch_size = _positive_int("train", "batch_size", batch_size)
    updates = _positive_int("train", "updates", updates)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"train: optimizer must be an optax GradientTransformation; got {optimizer!r}.")

    data_fn = data if callable(data) else None
    data_arr = None if data_fn else _points("train", "data", data)
    source_fn = x0 if callable(x0) else None
    x0_arr = None if (x0 is None or source_fn) else _points("train", "x0", x0)
    if x0_arr is not None:
        if data_arr is None or data_arr.shape != x0_arr.shape:
            raise ValueError(
                "train: an array x0 is a fixed coupling with an array data of the same shape "
                f"(n, d); got x0 {x0_arr.shape} and data "
                f"{'a sampler' if data_arr is None else data_arr.shape}. Pass x0=None or a "
                "sampler x0(key, n) for independent pairs."
            )
    if data_arr is not None:
        d, dtype = data_arr.shape[1], data_arr.dtype
    else:
        probe = jax.eval_shape(lambda k: data_fn(k, batch_size), jax.random.key(0))
        if len(probe.shape) != 2 or probe.shape[0] != batch_size:
            raise ValueError(f"train: data(key, {batch_size}) must return ({batch_size}, d); "
                             f"got {probe.shape}.")
        d, dtype = probe.shape[1], probe.dtype
    if source_fn is not None:
        probe = jax.eval_shape(lambda k: source_fn(k, batch_size), jax.random.key(0))
        if probe.shape != (batch_size, d):
            raise ValueError(f"train: x0(key, {batch_size}) must return ({batch_size}, {d}) "
                             f"like the data; got {probe.shape}.")
    _check_field("train", v, d, dtype)

    params, static = eqx.partition(v, eqx.is_inexact_array)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("train: the velocity field has no float array leaves to train.")

    def batch(k, arrays):
        data_arr, x0_arr = arrays
        kd, ks, ki = jax.random.split(k, 3)
        if data_arr is not None:
            idx = jax.random.randint(ki, (batch_size,), 0, data_arr.shape[0])
            x1b = data_arr[idx]
        else:
            idx, x1b = None, data_fn(kd, batch_size)
        if x0_arr is not None:
            x0b = x0_arr[idx]
        elif source_fn is not None:
            x0b = source_fn(ks, batch_size)
        else:
            x0b = jax.random.normal(ks, (batch_size, d), dtype)
        return x0b, x1b

    def loss_fn(p, k, arrays):
        kb, kl = jax.random.split(k)
        x0b, x1b = batch(kb, arrays)
        return _cfm_loss(eqx.combine(p, static), kl, x0b, x1b, path, sigma)

    # The one training loop (inference.training): chunked, guarded, with the bar.
    result = minimize(loss_fn, params, optimizer=optimizer, steps=steps, key=key,
                      data=(data_arr, x0_arr), updates=updates, progress=progress,
                      label="flow matching", on_interrupt=on_interrupt,
                      advice="check the data (finite, of moderate scale)")
    return TrainResult(eqx.combine(result.params, static), result.values)
