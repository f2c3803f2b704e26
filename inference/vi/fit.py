"""The VI driver: maximize an objective program over parameters by stochastic gradients.

``fit(objective, params, *args, optimizer=optax.adam(1e-3), steps=..., key=...)`` runs
``steps`` optimizer updates, each from one ``objective.grad_estimate`` (an unbiased gradient
estimate of the objective, negated because optax minimizes), with the data arguments
``args`` fixed. It returns a :class:`FitResult` with the final params and the per-step
objective estimates.

How it runs:

- One jit-compiled chunk of steps (a ``lax.scan``) is called a handful of times
  (``updates``, 20 by default) from the host; between chunks the host moves the progress bar
  (postfix: the mean objective over the last chunk) and checks for non-finite values. The
  host never syncs with the device every step, and the chunk is compiled once.
- Step ``i`` uses ``jax.random.fold_in(key, i)``, so the same key gives the same result
  whatever the chunking.
- Non-finite values: once the objective estimate, a gradient leaf or an updated parameter
  is not finite, the step is not applied and the remaining steps are skipped (params
  frozen). The host then raises :class:`NonFiniteError` with the step, what went non-finite
  (``err.kind``), the parameter leaf (its pytree path, e.g. ``params['loc']``, or
  ``"objective"`` when only the estimate was), and the last good params and optimizer state
  (``err.params``, ``err.opt_state``: those of the step before, where the objective and
  its gradients were last finite), to restart from with a smaller learning rate.
- Data arguments: array leaves (and Python floats) are traced; other leaves (ints such as a
  plate size, strings, ``None``) are fixed, as static values of the compiled step.

Minibatches: ``batch=(argnum, batch_size)`` subsamples ``args[argnum]`` (an array, or a
pytree of arrays sharing the leading axis ``N``) along its leading axis at every step:
``batch_size`` distinct indices drawn uniformly without replacement with that step's key, so
the objective sees ``args[argnum][idx]``. Scaling is the model's job: a minibatch of ``B``
of ``N`` points must count ``N / B`` times, e.g. with
``numpyro.plate("data", N, subsample_size=B)`` around the likelihood (pass ``N`` as another
argument) or ``numpyro.handlers.scale(..., N / B)``. Then the objective (and its gradient)
on a minibatch is unbiased for the full-data one.

Example:
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax, ppl
    >>> import inference
    >>> @ppl.expectation
    ... def objective(params, target):
    ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(params["loc"], 1.0)))
    ...     return -((values["z"] - target) ** 2)
    >>> result = inference.fit(objective, {"loc": jnp.zeros(())}, 3.0,
    ...                        optimizer=optax.adam(0.1), steps=500, key=0, progress=False)
    >>> result.values.shape, round(float(result.params["loc"]))
    ((500,), 3)
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

import ppl
from inference.arguments import as_key, positive_int, split_arguments, static_part
from inference.progress import ProgressBar
from inference.training import (FitResult, NonFiniteError, all_finite, leaf_names,
                                non_finite_error, optax_step, run_steps)
from inference.sharding import constrain_leading, mesh_for, put_replicated

__all__ = ["fit", "FitResult", "NonFiniteError", "split_arguments", "all_finite"]  # split_arguments: re-exported from inference.arguments


def _check_params(params: Any) -> Any:
    names = leaf_names(params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise ValueError("fit: params has no leaves; pass a pytree of float arrays to optimize.")
    out = []
    for name, leaf in zip(names, leaves):
        if isinstance(leaf, bool) or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"fit: parameter leaf {name} has dtype {jnp.result_type(leaf)}; parameters must "
                "be floating-point arrays (pass e.g. jnp.asarray(value, float))."
            )
        out.append(jnp.asarray(leaf))
    return jax.tree_util.tree_unflatten(tree, out)


def _check_batch(batch: Any, args: tuple) -> tuple[int, int, int] | None:
    """``(argnum, batch_size, N)`` from ``batch=(argnum, batch_size)``, validated."""
    if batch is None:
        return None
    ok = (isinstance(batch, tuple) and len(batch) == 2
          and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in batch))
    if not ok:
        raise ValueError(
            f"fit: batch must be None or (argnum, batch_size), two ints; got {batch!r}."
        )
    argnum, size = int(batch[0]), int(batch[1])
    if not 0 <= argnum < len(args):
        raise ValueError(
            f"fit: batch argnum {argnum} is not the index of a data argument; the objective "
            f"gets {len(args)} data argument(s) after params (argnum 0..{len(args) - 1})."
        )
    leaves = jax.tree_util.tree_leaves(args[argnum])
    lengths = {jnp.shape(x)[0] if jnp.ndim(x) > 0 else None for x in leaves}
    if not leaves or None in lengths or len(lengths) != 1:
        shapes = [tuple(jnp.shape(x)) for x in leaves]
        raise ValueError(
            f"fit: batch subsamples data argument {argnum} along its leading axis, which every "
            f"leaf must share; got leaf shapes {shapes}."
        )
    (n,) = lengths
    if not 1 <= size <= n:
        raise ValueError(
            f"fit: batch_size {size} must be between 1 and the data size {n} of argument {argnum}."
        )
    return argnum, size, n


def _data_mesh(data_sharding: Any, batching: tuple[int, int, int] | None) -> Mesh | None:
    if data_sharding is None:
        return None
    if batching is None:
        raise ValueError(
            "fit: data_sharding splits each step's minibatch over devices; pass "
            "batch=(argnum, batch_size) to say which data argument is batched."
        )
    size = batching[1]
    if isinstance(data_sharding, Mesh):
        if len(data_sharding.axis_names) != 1:
            raise ValueError(f"fit: data_sharding mesh must have one axis; got axes "
                             f"{data_sharding.axis_names}.")
        devices = list(data_sharding.devices.flat)
    else:
        devices = data_sharding
    return mesh_for(devices, size, what="minibatch rows (batch_size)", owner="fit",
                    fallback=False)


def fit(
    objective: ppl.Expectation,
    params: Any,
    *args: Any,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    key: jax.Array | int | None = None,
    batch: tuple[int, int] | None = None,
    progress: bool | ProgressBar = True,
    updates: int = 20,
    data_sharding: Any = None,
) -> FitResult:
    """Maximize ``objective(params, *args)`` over ``params`` with ``optimizer``.

    Args:
        objective: an :class:`ppl.Expectation` (``@ppl.expectation``, or an objective from
            ``ppl.objectives``) whose first argument is ``params``; a quantity to MAXIMIZE.
        params: initial parameters, a pytree of float arrays (e.g. from ``ppl.init_params``).
        *args: the objective's other (data) arguments, held fixed.
        optimizer: an optax transformation; default ``optax.adam(1e-3)``.
        steps: number of optimizer steps (a positive int).
        key: ``jax.random.key(...)`` or an int seed (default 0); step ``i`` uses
            ``fold_in(key, i)``.
        batch: ``None`` (full data) or ``(argnum, batch_size)``: subsample ``args[argnum]``
            along its leading axis each step (see the module docstring for the scaling).
        progress: show a progress bar, or a :class:`ProgressBar` to report to.
        updates: how many chunks the run is split into (host checks and bar updates).
        data_sharding: data-parallel training over devices (with ``batch``): each step's
            minibatch is split along its leading axis over the devices and the parameters
            and optimizer state are replicated, in one compiled program (XLA sums the
            gradient across devices). ``"all"``, a number of devices, a list of
            ``jax.Device`` or a :class:`jax.sharding.Mesh` with one axis (see
            :mod:`inference.sharding`); ``batch_size`` must divide by the number of
            devices. ``None`` (default): one device.

    Returns:
        :class:`FitResult` ``(params, values)`` with ``values`` of shape ``(steps,)``.

    Raises:
        NonFiniteError: (a ``FloatingPointError``) at the first step whose objective, gradient
            or update is not finite; ``err.params``/``err.opt_state`` keep the last good
            state and ``err.leaf`` names the parameter leaf (see :class:`NonFiniteError`).

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax, ppl
        >>> @ppl.expectation
        ... def neg_sq(params):
        ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(params, 0.1)))
        ...     return -(values["z"] - 1.0) ** 2
        >>> r = fit(neg_sq, jnp.zeros(()), optimizer=optax.sgd(0.1), steps=100, progress=False)
        >>> abs(float(r.params) - 1.0) < 0.1
        True
    """
    if not isinstance(objective, ppl.Expectation):
        raise TypeError(
            f"fit: objective must be an expectation (decorate it with @ppl.expectation, or use "
            f"ppl.objectives.elbo(model, guide)); got {objective!r} ({type(objective).__name__})."
        )
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"fit: optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-3)); "
            f"got {optimizer!r}."
        )
    steps = positive_int("steps", steps)
    updates = positive_int("updates", updates)
    key = as_key(key)
    params = _check_params(params)
    batching = _check_batch(batch, args)
    names = leaf_names(params)

    dyn, full_args = split_arguments(args)
    mesh = _data_mesh(data_sharding, batching)

    @ppl.expectation
    def bound(params, dyn):  # the objective with its fixed arguments closed over
        return objective(params, *full_args(dyn))

    def subsample(k, dyn):
        if batching is None:
            return dyn
        argnum, size, n = batching
        idx = jax.random.choice(k, n, (size,), replace=False)
        data = full_args(dyn)
        part = constrain_leading(jax.tree.map(lambda x: x[idx], data[argnum]), mesh, size)
        data = data[:argnum] + (part,) + data[argnum + 1:]
        return split_arguments(data)[0]

    # Everything the compiled chunks use is an argument (key, data) or part of their cache
    # key (objective, optimizer, sizes, static data): nothing per-call is closed over.
    def value_and_descent(params, k, dyn):  # objective estimate, gradient to descend
        k_obj, k_batch = jax.random.split(k)
        value, (grads, _) = bound.value_and_grad_estimate(k_obj, params, subsample(k_batch, dyn))
        return value.astype(jnp.result_type(float)), jax.tree.map(jnp.negative, grads)

    state = (params, optimizer.init(params))
    if mesh is not None:  # parameters, optimizer state and the full data: a copy per device
        state, dyn = put_replicated((state, dyn), mesh)
    trained = run_steps(
        optax_step(value_and_descent, optimizer), state, steps=steps, key=key, data=dyn,
        updates=updates, progress=progress, label="fit",
        program_key=(objective, optimizer, batching, static_part(args), mesh,
                     jax.tree_util.tree_structure(params)),
        postfix=lambda values: {"objective": float(jnp.mean(values))},
    )
    if trained.stopped is None:
        return FitResult(trained.state[0], trained.outputs)
    raise non_finite_error(
        "fit", trained.stopped, trained.outputs, names, quantity="objective estimate",
        advice="check the model and guide near err.bad_params (a scale that reaches 0, exp "
               "overflow, log or sqrt of a negative number)")
