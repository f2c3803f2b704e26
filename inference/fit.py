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
    """The objective, a gradient or an updated parameter stopped being finite in :func:`fit`.

    Step ``j`` evaluates the objective estimate and its gradients at the params after ``j``
    updates and applies one more update. The first step where the estimate, a gradient leaf
    or an updated leaf is not finite is ``step``; nothing from it is applied.

    Attributes:
        step: 0-based index of that first bad step.
        kind: what went non-finite first: ``"objective"`` (the estimate; gradients may be
            non-finite too), ``"gradient"`` (a gradient leaf, with a finite estimate) or
            ``"update"`` (an updated parameter overflowed; estimate and gradients finite).
        leaf: the pytree path of the first parameter leaf whose gradient (or, for ``"update"``,
            updated value) was not finite (``"params['loc']"``), or ``"objective"`` when only
            the objective estimate was (every gradient finite).
        leaves: every such parameter leaf path (empty when ``leaf == "objective"``).
        params, opt_state: the last good state, from which a smaller learning rate can carry
            on: for ``"objective"`` and ``"gradient"``, the params and optimizer state of the
            step before ``step`` (the last point where the estimate and its gradients were
            finite; the initial ones if ``step`` is 0); for ``"update"``, those of ``step``.
        params_step: how many updates ``params`` had (``step - 1``, ``step``, or 0).
        bad_params: the params ``step`` was evaluated at (where to look at the model).
        result: :class:`FitResult` with ``params`` and the ``step`` objective estimates
            before ``step``.

    Example:
        >>> import jax.numpy as jnp, optax, ppl, inference
        >>> @ppl.expectation
        ... def cliff(params):  # NaN once x passes 2.5; SGD(1) moves x by 1 per step
        ...     return jnp.where(params["x"] > 2.5, jnp.nan, params["x"])
        >>> try:
        ...     inference.fit(cliff, {"x": jnp.zeros(())}, optimizer=optax.sgd(1.0),
        ...                   steps=10, progress=False)
        ... except inference.NonFiniteError as err:
        ...     print(err.step, err.kind, err.leaf, float(err.params["x"]),
        ...           float(err.bad_params["x"]))
        3 objective objective 2.0 3.0
    """

    def __init__(self, message: str, step: int, leaf: str | None, result: FitResult, *,
                 kind: str | None = None, leaves: tuple[str, ...] = (), opt_state: Any = None,
                 bad_params: Any = None, params_step: int | None = None):
        super().__init__(message)
        self.step, self.leaf, self.result = step, leaf, result
        self.kind, self.leaves = kind, tuple(leaves)
        self.params, self.opt_state, self.bad_params = result.params, opt_state, bad_params
        self.params_step = step if params_step is None else params_step


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

    def finite(tree_) -> jax.Array:  # one flag per leaf
        return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree_)])

    nan = jnp.asarray(jnp.nan, jnp.result_type(float))

    # Everything the compiled chunks use is an argument (key, data) or part of their cache
    # key (objective, optimizer, sizes, static data): nothing per-call is closed over.
    def step(carry, i, key, dyn):
        # The guarded step. Carry: the current state, the state of the step before (the
        # last good one if this step fails), the first bad step (-1: none yet), which
        # gradient and updated leaves were non-finite there, and whether the value was.
        params, opt_state, prev, bad_step, bad_grads, bad_updates, bad_value = carry
        k_obj, k_batch = jax.random.split(jax.random.fold_in(key, i))
        data = subsample(k_batch, dyn)
        value, (grads, _) = bound.value_and_grad_estimate(k_obj, params, data)
        value = value.astype(nan.dtype)
        neg = jax.tree.map(jnp.negative, grads)
        upd, new_state = optimizer.update(neg, opt_state, params)
        new_params = optax.apply_updates(params, upd)
        value_ok, grads_ok, params_ok = jnp.isfinite(value), finite(grads), finite(new_params)
        ok = value_ok & jnp.all(grads_ok) & jnp.all(params_ok)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        i = i.astype(bad_step.dtype)  # int64 under jax_enable_x64
        return (keep(new_params, params), keep(new_state, opt_state),
                keep((params, opt_state), prev), jnp.where(ok, bad_step, i),
                jnp.where(ok, bad_grads, ~grads_ok), jnp.where(ok, bad_updates, ~params_ok),
                jnp.where(ok, bad_value, ~value_ok)), value

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
            go = (i < steps) & (c[3] < 0)
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

    def guard_carry(state):
        no = jnp.zeros((len(names),), bool)
        return (*state, state, jnp.asarray(-1, jnp.int32), no, no, jnp.asarray(False))

    def compiled_guarded():
        with compiling("fit (guarded replay)", bar.enabled) as programs:
            return programs.compile(jax.jit(run_guarded), (guard_carry(state), starts[0], key, dyn),
                                    key=("fit-guarded", *program_key))

    with compiling("fit", bar.enabled) as programs:
        compiled = programs.compile(jax.jit(run_fast), (state, starts[0], key, dyn),
                                    key=("fit", *program_key))
    bar.update(0, {})
    chunks = []
    carry = None
    previous = state  # the state at the start of the chunk before (for the replay)
    try:
        for c in range(n_chunks):
            new_state, chunk_values, ok = compiled(state, starts[c], key, dyn)
            if not bool(ok):  # one host sync per chunk
                # Replay from the chunk before (if any) with the guarded step, so that the
                # state of the step before the bad one is known even when the bad step is
                # the chunk's first.
                first = max(c - 1, 0)
                replay = guard_carry(previous if c > 0 else state)
                del chunks[first:]
                for r in range(first, c + 1):
                    replay, replay_values = compiled_guarded()(replay, starts[r], key, dyn)
                    chunks.append(replay_values)
                    if int(replay[3]) >= 0:
                        break
                if int(replay[3]) >= 0:
                    carry = replay
                    break
                # The guarded replay found every step finite (the two programs may round
                # differently): carry on from its state.
                new_state, chunk_values = replay[:2], chunks[-1]
            else:
                chunks.append(chunk_values)
            previous, state = state, new_state
            if bar.enabled:
                done = min((c + 1) * chunk, steps)
                bar.update(done, {"objective": float(jnp.mean(chunk_values[:done - c * chunk]))})
    finally:
        bar.close()

    values = jnp.concatenate(chunks)
    if carry is None:
        return FitResult(state[0], values[:steps])
    raise _non_finite(carry, values, names)


def _non_finite(carry: tuple, values: jax.Array, names: list[str]) -> NonFiniteError:
    """The :class:`NonFiniteError` for a guarded carry that stopped at a bad step."""
    bad_params, bad_state, (prev_params, prev_state), bad_step, bad_grads, bad_updates, \
        bad_value = carry
    bad_step = int(bad_step)
    grads_flags, update_flags = np.asarray(bad_grads), np.asarray(bad_updates)
    value = float(values[bad_step])
    if bool(bad_value):
        kind = "objective"
    else:
        kind = "gradient" if grads_flags.any() else "update"
    flags = update_flags if kind == "update" else grads_flags
    leaves = tuple(n for n, f in zip(names, flags) if f)
    leaf = leaves[0] if leaves else "objective"
    listed = ", ".join(leaves[:4]) + (f" and {len(leaves) - 4} more" if len(leaves) > 4 else "")
    if kind == "update":
        # The estimate and gradients at the step's params were finite: restart from there.
        good, good_state, good_step = bad_params, bad_state, bad_step
        what = (f"the update made parameter leaf {listed} non-finite (overflow; the objective "
                f"estimate {value} and the gradients were finite)")
    else:
        good, good_state, good_step = prev_params, prev_state, max(bad_step - 1, 0)
        if kind == "objective" and not leaves:
            what = (f"only the objective estimate was non-finite ({value}; the gradients were "
                    "finite), so err.leaf is 'objective'")
        elif kind == "objective":
            what = f"non-finite objective estimate ({value}) and gradient of {listed}"
        else:
            what = f"non-finite gradient of {listed} (objective estimate {value})"
    last = "" if kind == "update" else (", the last point where the objective and gradients "
                                        "were finite")
    message = (
        f"fit: step {bad_step} (0-based) went non-finite: {what}. Training stopped. "
        f"err.params and err.opt_state hold the last good state (after {good_step} update(s)"
        f"{last}); err.bad_params the params step {bad_step} was evaluated at. To fix: lower the "
        "learning rate (or clip gradients, optax.clip_by_global_norm) and restart from "
        "err.params, and check the model and guide near err.bad_params (a scale that "
        "reaches 0, exp overflow, log or sqrt of a negative number)."
    )
    return NonFiniteError(message, bad_step, leaf, FitResult(good, values[:bad_step]),
                          kind=kind, leaves=leaves, opt_state=good_state, bad_params=bad_params,
                          params_step=good_step)
