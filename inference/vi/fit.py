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

Long runs (as :func:`inference.infer` does for MCMC chains):

- **Ctrl-C** (``KeyboardInterrupt``) stops at the end of the chunk in flight and returns
  the parameters reached, a :class:`FitResult` with ``interrupted=True`` and ``step`` the
  steps applied, with a warning saying how many.
- **Continue**: pass a :class:`FitResult` (finished or interrupted) as ``params``: the run
  goes on from its parameters and optimizer state for ``steps`` more steps, with its key
  unless another is given; ``fit(obj, fit(obj, p, steps=N), steps=M)`` equals
  ``fit(obj, p, steps=N + M)`` bit for bit (same optimizer, data and key), its ``values``
  included.
- **Checkpoints**: ``checkpoint="fit.npz"`` writes the parameters, optimizer state and
  objective values every ``checkpoint_every`` steps (rounded up to the end of a chunk;
  default: every chunk) and when the run ends or is interrupted; the same call again
  resumes from the file (a finished file gives its result back at once), so a crashed run
  finishes with the same numbers as an uninterrupted one. The file must come from the same
  call (steps, key, data, initial parameters), else a ``ValueError`` says what differs.

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
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

import ppl
from inference.arguments import as_key, positive_int, split_arguments, static_part
from inference.progress import ProgressBar
from inference import checkpoint as ckpt
from inference.stacklevel import user_stacklevel
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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> FitResult:
    """Maximize ``objective(params, *args)`` over ``params`` with ``optimizer``.

    Args:
        objective: an :class:`ppl.Expectation` (``@ppl.expectation``, or an objective from
            ``ppl.objectives``) whose first argument is ``params``; a quantity to MAXIMIZE.
        params: initial parameters, a pytree of float arrays (e.g. from ``ppl.init_params``);
            or a :class:`FitResult` to continue (its parameters, optimizer state, step
            count and key; see the module docstring).
        *args: the objective's other (data) arguments, held fixed.
        optimizer: an optax transformation; default ``optax.adam(1e-3)`` (continuing a
            FitResult: the same optimizer as its run, whose state it holds).
        steps: number of optimizer steps (a positive int); continuing, the steps to add.
        key: ``jax.random.key(...)`` or an int seed (default 0, or a continued FitResult's
            key); step ``i`` uses ``fold_in(key, i)``.
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
        checkpoint, checkpoint_every: a file (``.npz``) the state is written to every
            ``checkpoint_every`` steps and at the end, and resumed from when it exists
            (see the module docstring).

    Returns:
        :class:`FitResult` ``(params, values)`` with ``values`` of shape ``(steps,)`` (with a
        continued FitResult's values first), ``opt_state``, ``step``, ``key`` and
        ``interrupted`` (Ctrl-C: the parameters reached, with a warning).

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

        Continued: 60 steps, then 40 more, are the same 100 steps.

        >>> half = fit(neg_sq, jnp.zeros(()), optimizer=optax.sgd(0.1), steps=60, progress=False)
        >>> again = fit(neg_sq, half, optimizer=optax.sgd(0.1), steps=40, progress=False)
        >>> bool(again.params == r.params), again.step
        (True, 100)
    """
    return fit_within(objective, params, *args, optimizer=optimizer, steps=steps, key=key,
                batch=batch, progress=progress, updates=updates, data_sharding=data_sharding,
                checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def fit_within(objective: ppl.Expectation, params: Any, *args: Any, optimizer: Any = None,
         steps: int = 1000, key: Any = None, batch: Any = None,
         progress: bool | ProgressBar = True, updates: int = 20, data_sharding: Any = None,
         checkpoint: Any = None, checkpoint_every: int | None = None, owner: str = "fit",
         warn_interrupt: bool = True) -> FitResult:
    """:func:`fit`, for callers that name themselves in its messages (``owner``) and may
    warn about an interruption themselves (``warn_interrupt=False``)."""
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
    previous = params if isinstance(params, FitResult) else None
    if previous is not None:
        params = previous.params
        key = previous.key if key is None and previous.key is not None else key
    key = as_key(key)
    params = _check_params(params)
    batching = _check_batch(batch, args)
    names = leaf_names(params)
    if checkpoint is None and checkpoint_every is not None:
        raise ValueError("fit: checkpoint_every is given but checkpoint is not: pass "
                         "checkpoint='fit.npz' (the file to write) as well.")
    if checkpoint_every is not None:
        checkpoint_every = positive_int("checkpoint_every", checkpoint_every)

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

    opt_state = optimizer.init(params)
    start, earlier = 0, jnp.zeros((0,), jnp.result_type(float))
    if previous is not None:
        opt_state = _previous_opt_state(previous, opt_state, owner)
        start, earlier = previous.step, jnp.asarray(previous.values)
    total = start + steps
    saver = None
    if checkpoint is not None:
        saver = _Checkpoint(checkpoint, checkpoint_every, {
            "owner": owner, "start": start, "steps": steps,
            "key": ckpt.to_host(jax.random.key_data(key)).tolist(),
            "data": ckpt.data_digest(args), "batch": None if batching is None else list(batching),
            "params": [[list(jnp.shape(x)), str(jnp.result_type(x))]
                       for x in jax.tree.leaves(params)],
            "init": ckpt.data_digest(params),
            "x64": bool(jax.config.jax_enable_x64)})
        resumed = saver.restore((params, opt_state), earlier)
        if resumed is not None:
            (params, opt_state), earlier, start = resumed
            if start == total:  # a finished run's file: its result at once
                return FitResult(params, earlier, opt_state=opt_state, step=start, key=key)

    # Strong types: a continued run's state (after steps) and a fresh one (weak-typed
    # literals from an init) then reuse the same compiled programs.
    state = jax.tree.map(_strong, (params, opt_state))
    if mesh is not None:  # parameters, optimizer state and the full data: a copy per device
        state, dyn = put_replicated((state, dyn), mesh)
    values_before = earlier

    def after_chunk(state, done, outputs):
        if saver is not None:
            saver.maybe_write(state, jnp.concatenate([values_before, outputs]), start + done,
                              force=start + done == total)

    trained = run_steps(
        optax_step(value_and_descent, optimizer), state, steps=total - start, key=key,
        data=dyn, updates=updates, progress=progress, label=owner,
        program_key=(objective, optimizer, batching, static_part(args), mesh,
                     jax.tree_util.tree_structure(params)),
        postfix=lambda values: {"objective": float(jnp.mean(values))},
        start=start, after_chunk=after_chunk, on_interrupt="return",
    )
    values = jnp.concatenate([values_before, trained.outputs])
    if trained.stopped is None:
        params, opt_state = trained.state
        done = start + int(trained.outputs.shape[0])
        if trained.interrupted:
            if saver is not None:
                saver.maybe_write(trained.state, values, done, force=True)
            if warn_interrupt:
                warnings.warn(
                    f"{owner}: interrupted (KeyboardInterrupt) after {done} of {total} steps; "
                    f"returning the parameters reached (result.interrupted is True). "
                    f"fit(objective, result, ..., steps={total - done}) finishes the run.",
                    UserWarning, stacklevel=user_stacklevel())
        return FitResult(params, values, opt_state=opt_state, step=done, key=key,
                         interrupted=trained.interrupted)
    raise non_finite_error(
        owner, trained.stopped, values, names, quantity="objective estimate",
        advice="check the model and guide near err.bad_params (a scale that reaches 0, exp "
               "overflow, log or sqrt of a negative number)")


def _strong(x: Any) -> Any:
    return jnp.asarray(x, jnp.result_type(x)) if isinstance(x, (jax.Array, float, int)) else x


def _previous_opt_state(previous: FitResult, fresh: Any, owner: str) -> Any:
    """The optimizer state of a FitResult being continued, checked against the optimizer's."""
    if previous.opt_state is None:
        raise ValueError(
            f"{owner}: the FitResult passed as params holds no optimizer state (it was not "
            "made by fit), so it cannot be continued exactly; pass result.params to start "
            "a new run from its parameters.")
    like = jax.tree_util.tree_structure(fresh)
    if jax.tree_util.tree_structure(previous.opt_state) != like or any(
            jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(previous.opt_state),
                                                         jax.tree.leaves(fresh))):
        raise ValueError(
            f"{owner}: the FitResult passed as params holds the state of another optimizer "
            f"(its structure {jax.tree_util.tree_structure(previous.opt_state)} differs from "
            f"this optimizer's {like}); continue with the optimizer it was fitted with.")
    return previous.opt_state


class _Checkpoint:
    """A fit's parameters, optimizer state and objective values on disk (resumable)."""

    def __init__(self, path: Any, every: int | None, fingerprint: dict):
        self.path, self.every, self.fingerprint = os.fspath(path), every, fingerprint
        self.last = fingerprint["start"]

    def restore(self, like_state: Any, earlier: jax.Array):
        """``(state, values, step)`` from the file, or ``None`` when there is none."""
        if not os.path.exists(self.path):
            return None
        arrays, meta = ckpt.read_archive(self.path)
        if meta.get("kind") != "fit checkpoint":
            what = {"checkpoint": "an MCMC run's checkpoint", "result": "a saved Result"}.get(
                meta.get("kind"), repr(meta.get("kind")))
            raise ValueError(
                f"checkpoint={self.path!r} is not a fit's checkpoint (it holds {what}); pass "
                "another path.")
        stored = meta["run"]
        differ = sorted(k for k in set(stored) | set(self.fingerprint)
                        if stored.get(k) != self.fingerprint.get(k))
        if differ:
            raise ValueError(
                f"checkpoint {self.path!r} was written by a different run: it differs in "
                f"{', '.join(differ)} (file: "
                + ", ".join(f"{k}={stored.get(k)!r}" for k in differ if k != "key")
                + "). Call again with the same settings to resume it, or delete the file "
                "(or pass another checkpoint path) to start afresh.")
        leaves = [arrays[f"state{i}"] for i in range(meta["num_state"])]
        state = ckpt.unflatten_like(like_state, leaves, f"checkpoint {self.path!r}")
        values = jnp.asarray(arrays["values"], earlier.dtype)
        self.last = int(meta["step"])
        return state, values, int(meta["step"])

    def maybe_write(self, state: Any, values: jax.Array, step: int, force: bool = False) -> None:
        if not force and self.every is not None and step - self.last < self.every:
            return
        arrays = {f"state{i}": ckpt.to_host(x) for i, x in enumerate(jax.tree.leaves(state))}
        arrays["values"] = ckpt.to_host(values)
        ckpt.write_archive(self.path, arrays, {
            "kind": "fit checkpoint", "run": self.fingerprint, "step": int(step),
            "num_state": len(arrays) - 1})
        self.last = step
