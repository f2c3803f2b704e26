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
  frozen). The host then raises :class:`NonFiniteError` naming the step and the first
  non-finite parameter leaf (its pytree path, e.g. ``params['loc']``); ``err.result`` is the
  :class:`FitResult` with the last finite params and the objective values before that step.
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

import ppl
from inference.arguments import as_key, positive_int, split_arguments, static_part
from inference.compilation import compiling
from inference.progress import ProgressBar, chunk_sizes
from inference.sharding import constrain_leading, mesh_for, put_replicated

__all__ = ["fit", "FitResult", "NonFiniteError", "split_arguments", "all_finite"]  # split_arguments: re-exported from inference.arguments


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        params: the fitted parameters (same pytree structure as the initial ones).
        values: per-step objective estimates, shape ``(steps,)`` (or the steps that ran
            before a non-finite one, in :attr:`NonFiniteError.result`).
    """

    params: Any
    values: jax.Array


class NonFiniteError(FloatingPointError):
    """The objective or its gradient stopped being finite during :func:`fit`.

    Attributes:
        step: 0-based index of the first step whose objective estimate, gradient or update
            was not finite (``step`` updates were applied before it).
        leaf: pytree path of the first non-finite parameter leaf (``"params['loc']"``), or
            ``None`` when only the objective value was not finite.
        result: :class:`FitResult` with the last finite params (those before ``step``) and
            the ``step`` objective values estimated before it.
    """

    def __init__(self, message: str, step: int, leaf: str | None, result: FitResult):
        super().__init__(message)
        self.step, self.leaf, self.result = step, leaf, result


def all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating-point array leaf of ``tree`` is finite (True if none).

    Example:
        >>> import jax.numpy as jnp
        >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.nan]), "n": 3}))
        False
    """
    arrays = [x for x in jax.tree_util.tree_leaves(tree)
              if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays])) if arrays \
        else jnp.asarray(True)


def _leaf_names(params: Any) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return [f"params{jax.tree_util.keystr(path)}" for path, _ in paths]


def _check_params(params: Any) -> Any:
    names = _leaf_names(params)
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
            or update is not finite; ``err.result`` keeps the last finite params.

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
    names = _leaf_names(params)

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

    def finite(tree_) -> jax.Array:
        return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree_)])

    nan = jnp.asarray(jnp.nan, jnp.result_type(float))

    # Everything the compiled chunks use is an argument (key, data) or part of their cache
    # key (objective, optimizer, sizes, static data): nothing per-call is closed over.
    def step(carry, i, key, dyn):
        params, opt_state, bad_step, bad_leaves = carry
        k_obj, k_batch = jax.random.split(jax.random.fold_in(key, i))
        data = subsample(k_batch, dyn)
        value, (grads, _) = bound.value_and_grad_estimate(k_obj, params, data)
        value = value.astype(nan.dtype)
        neg = jax.tree.map(jnp.negative, grads)
        upd, new_state = optimizer.update(neg, opt_state, params)
        new_params = optax.apply_updates(params, upd)
        leaves_ok = finite(grads) & finite(new_params)
        ok = jnp.isfinite(value) & jnp.all(leaves_ok)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        bad_leaves = jnp.where(ok, bad_leaves, ~leaves_ok)
        bad_step = jnp.where(ok, bad_step, i)
        return (keep(new_params, params), keep(new_state, opt_state), bad_step, bad_leaves), value

    def fast_step(carry, i, key, dyn):
        params, opt_state = carry
        k_obj, k_batch = jax.random.split(jax.random.fold_in(key, i))
        data = subsample(k_batch, dyn)
        value, (grads, _) = bound.value_and_grad_estimate(k_obj, params, data)
        value = value.astype(nan.dtype)
        upd, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        return (optax.apply_updates(params, upd), opt_state), value

    n_chunks, chunk = chunk_sizes(steps, updates)
    padded = n_chunks * chunk > steps

    # Two compiled chunk runners. The fast one applies plain optimizer steps and checks
    # finiteness once, at the chunk's end (the per-step guard costs ~30% of a VAE step).
    # Only if that check fails is the chunk replayed from its starting state with the
    # guarded step, which finds the exact first bad step and leaf; step keys are
    # fold_in(key, i), so the replay draws the same numbers.
    def run_fast(carry, start, key, dyn):
        def body(c, i):
            if padded:  # steps past the end leave everything untouched
                return jax.lax.cond(i < steps, lambda c: fast_step(c, i, key, dyn),
                                    lambda c: (c, nan), c)
            return fast_step(c, i, key, dyn)

        carry, values = jax.lax.scan(body, carry, start + jnp.arange(chunk))
        valid = (start + jnp.arange(chunk)) < steps
        ok = jnp.all(jnp.isfinite(values) | ~valid) & jnp.all(finite(carry[0]))
        return carry, values, ok

    def run_guarded(carry, start, key, dyn):
        def body(c, i):
            # Steps past the end, or after a non-finite one, leave everything untouched.
            go = (i < steps) & (c[2] < 0)
            return jax.lax.cond(go, lambda c: step(c, i, key, dyn), lambda c: (c, nan), c)

        return jax.lax.scan(body, carry, start + jnp.arange(chunk))

    state = (params, optimizer.init(params))
    if mesh is not None:  # parameters, optimizer state and the full data: a copy per device
        state, dyn = put_replicated((state, dyn), mesh)
    bar = progress if isinstance(progress, ProgressBar) else ProgressBar(
        steps, desc="fit", enabled=bool(progress)
    )
    # Compile before the bar opens, so that its clock counts steps only.
    starts = [jnp.asarray(c * chunk, jnp.int32) for c in range(n_chunks)]
    program_key = (objective, optimizer, steps, chunk, batching, static_part(args), mesh,
                   jax.tree_util.tree_structure(params))

    def compiled_guarded():
        with compiling("fit (guarded replay)", bar.enabled) as programs:
            return programs.compile(jax.jit(run_guarded), (guard_carry(state), starts[0], key, dyn),
                                    key=("fit-guarded", *program_key))

    def guard_carry(state):
        return (*state, jnp.asarray(-1, jnp.int32), jnp.zeros((len(names),), bool))

    with compiling("fit", bar.enabled) as programs:
        compiled = programs.compile(jax.jit(run_fast), (state, starts[0], key, dyn),
                                    key=("fit", *program_key))
    bar.update(0, {})
    chunks = []
    carry = None
    try:
        for c in range(n_chunks):
            new_state, chunk_values, ok = compiled(state, starts[c], key, dyn)
            if not bool(ok):  # one host sync per chunk
                carry, chunk_values = compiled_guarded()(guard_carry(state), starts[c], key, dyn)
                chunks.append(chunk_values)
                if int(carry[2]) >= 0:
                    break
                # The guarded replay found every step finite (the two programs may round
                # differently): carry on from its state.
                new_state, carry = carry[:2], None
            else:
                chunks.append(chunk_values)
            state = new_state
            if bar.enabled:
                done = min((c + 1) * chunk, steps)
                bar.update(done, {"objective": float(jnp.mean(chunk_values[:done - c * chunk]))})
    finally:
        bar.close()
    if carry is None:
        carry = guard_carry(state)

    values = jnp.concatenate(chunks)
    params, _, bad_step, bad_leaves = carry
    bad_step = int(bad_step)
    if bad_step < 0:
        return FitResult(params, values[:steps])
    result = FitResult(params, values[:bad_step])
    flags = np.asarray(bad_leaves)
    leaf = names[int(np.argmax(flags))] if flags.any() else None
    value = float(values[bad_step])
    where = (f"first non-finite parameter leaf: {leaf} (its gradient or update)" if leaf
             else "the gradients were finite")
    raise NonFiniteError(
        f"fit: non-finite objective or gradient at step {bad_step} (0-based; {bad_step} "
        f"step(s) were applied): objective estimate {value}; {where}. Training stopped; "
        "err.result holds the last finite params. Check the model and guide at these params "
        "(a scale that reaches 0, exp overflow) or lower the learning rate.",
        bad_step, leaf, result,
    )
