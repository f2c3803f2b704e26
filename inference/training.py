"""The one training loop: guarded steps in compiled chunks, called a few times from the host.

Every trainer in the library runs here: :func:`inference.fit` (objective programs),
flow matching (:func:`inference.flow_matching.train`), score matching
(:func:`inference.score.fit_score`), flows fitted to draws
(:func:`inference.learned.fit_flow_to_draws`) and the models' own trainers
(:func:`models.latent_flow.fit`, :func:`models.coopflow.fit`). A trainer gives one *step*;
:func:`run_steps` does the rest, the same way for all of them:

- **Chunks.** The ``steps`` are split into about ``updates`` chunks
  (:func:`inference.progress.chunk_sizes`); one chunk is one jit-compiled ``lax.scan``, compiled
  once through :func:`inference.programs.cache.compiling` (a "compiling..." line, the program
  cache when the trainer gives a ``program_key``). Between chunks the host moves the progress
  bar (with the trainer's ``postfix``) and checks finiteness: one device sync per chunk, never
  per step. A padded last chunk leaves its extra steps idle.
- **Keys.** Step ``i`` gets the run's key and ``i``; trainers use ``fold_in(key, i)``, so
  the result does not depend on the chunking.
- **Non-finite values.** The fast chunk applies plain steps and checks, at its end, that
  every output and every floating-point leaf of the state is finite. If not, the chunk (and
  the one before it) is replayed with the *guarded* step: a step whose ``ok`` flags are not
  all true is not applied and the remaining steps idle. The replay finds the exact first bad
  step, which parts went non-finite (the flags), the state it started from and the state one
  step before (:class:`Stopped`). Step keys are the same in the replay, so it draws the same
  numbers. The trainer turns :class:`Stopped` into its error (:func:`non_finite_error` for
  optax-style trainers; :class:`NonFiniteError` in every case).

- **Ctrl-C.** A ``KeyboardInterrupt`` lets the chunk in flight finish (it runs in a worker
  thread, so its result survives the interrupted wait), keeps it, and returns the state
  reached (:attr:`Trained.interrupted`, with a warning naming the trainer and the steps
  done); interrupted before the first chunk finished, it propagates.
- **Continuing.** ``start=`` numbers the steps from where an earlier run stopped, and the
  compiled chunks depend only on the chunk length, so ``N`` steps then ``M`` more equal
  ``N + M`` steps bit for bit (:func:`inference.fit` passes a ``FitResult`` on this way).

A step is ``step(state, i, key, data, guard) -> (new_state, outputs, ok)``: ``state`` any
pytree (parameters, optimizer state, banks of chains), ``outputs`` a pytree of per-step
values (losses, diagnostics), ``ok`` (only needed when ``guard`` is true) a 1-D boolean
array, one flag per part the trainer wants named. :func:`minimize` builds the step for the
common case (an optax optimizer on a loss) and names the parameter leaf that went bad.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> loss = lambda p, key, data: jnp.sum((p["w"] - data) ** 2)
    >>> r = minimize(loss, {"w": jnp.zeros(2)}, optimizer=optax.sgd(0.1), steps=100,
    ...              key=jax.random.key(0), data=jnp.array([1.0, -2.0]))
    >>> [round(float(x), 3) for x in r.params["w"]], r.values.shape
    ([1.0, -2.0], (100,))
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference import interrupt
from inference.stacklevel import user_stacklevel
from inference.programs.cache import compiling
from inference.progress import ProgressBar, chunk_sizes
from inference.training_results import FitResult, NonFiniteError, Stopped, non_finite_error

__all__ = ["run_steps", "minimize", "Trained", "Stopped", "FitResult", "NonFiniteError",
           "non_finite_error", "all_finite", "leaf_flags", "leaf_names"]

#: ``step(state, i, key, data, guard) -> (new_state, outputs, ok)`` (see the module docstring).
Step = Callable[[Any, jax.Array, jax.Array, Any, bool], tuple[Any, Any, Any]]


def _inexact_leaves(tree: Any) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree)
            if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)]


def all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating-point array leaf of ``tree`` is finite (True if none).

    Example:
        >>> import jax.numpy as jnp
        >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.nan]), "n": 3}))
        False
    """
    arrays = _inexact_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays])) if arrays \
        else jnp.asarray(True)


def leaf_flags(tree: Any) -> jax.Array:
    """One flag per leaf of ``tree``: is every element finite (the order of ``leaf_names``).

    Example:
        >>> import jax.numpy as jnp
        >>> leaf_flags({"a": jnp.ones(2), "b": jnp.array([jnp.inf])}).tolist()
        [True, False]
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((0,), bool)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def leaf_names(tree: Any, prefix: str = "params") -> list[str]:
    """The pytree path of every leaf, e.g. ``["params['loc']", "params['scale']"]``.

    Example:
        >>> leaf_names({"loc": 0.0, "scale": 1.0})
        ["params['loc']", "params['scale']"]
    """
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [f"{prefix}{jax.tree_util.keystr(path)}" for path, _ in paths]


class Trained(NamedTuple):
    """What :func:`run_steps` returns.

    Attributes:
        state: the final state (or, when stopped, the state the bad step started from).
        outputs: the steps' outputs, leading axis ``steps`` (when stopped: the steps up to
            and including the bad one).
        stopped: ``None``, or :class:`Stopped`.
        interrupted: Ctrl-C stopped the run after ``len(outputs)`` steps (``state`` is the
            state they reached).
    """

    state: Any
    outputs: Any
    stopped: Stopped | None
    interrupted: bool = False


def _filler(shape: jax.ShapeDtypeStruct) -> jax.Array:
    fill = jnp.nan if jnp.issubdtype(shape.dtype, jnp.inexact) else 0
    return jnp.full(shape.shape, fill, shape.dtype)


def run_steps(
    step: Step,
    state: Any,
    *,
    steps: int,
    key: jax.Array,
    data: Any = (),
    updates: int = 20,
    progress: bool | ProgressBar = False,
    label: str = "train",
    program_key: tuple | None = None,
    postfix: Callable[[Any], dict] | None = None,
    start: int = 0,
    after_chunk: Callable[[Any, int, Any], None] | None = None,
    on_interrupt: str = "warn",
) -> Trained:
    """Run ``steps`` of ``step`` from ``state`` in compiled chunks (see the module docstring).

    Args:
        step: ``step(state, i, key, data, guard) -> (new_state, outputs, ok)``; with
            ``guard`` false, ``ok`` may be ``None`` (it is not used).
        state: the initial state, a pytree.
        steps: the number of steps (an int >= 1).
        key: a ``jax.random.key``, passed to every step with its index.
        data: arrays the steps read (program arguments, not constants).
        updates: about how many chunks (host round trips).
        progress: show a bar labelled ``label``, or a :class:`ProgressBar` to report to.
        label: names the bar and the compiled programs.
        program_key: what, besides the shapes of ``state``/``key``/``data``, decides the
            program (the step's settings): then the compiled chunks are cached; ``None``: they
            are compiled for this call only.
        postfix: ``postfix(outputs of the chunk's valid steps) -> dict`` for the bar.
        start: the index of the first step (a run continued after ``start`` steps: step
            ``start + j`` gets index ``start + j``, so ``N`` steps then ``M`` more from
            ``start=N`` make the same steps as ``N + M`` at once).
        after_chunk: ``after_chunk(state, done, outputs)`` after each chunk that finished
            finite: ``done`` steps of this call are applied, ``outputs`` theirs (what a
            checkpoint writes).
        on_interrupt: what Ctrl-C (``KeyboardInterrupt``) does: it stops the run at the end
            of the chunk in flight and returns the state reached (``Trained.interrupted``),
            with a warning (``"warn"``) or without (``"return"``, for a caller that warns
            itself); ``"raise"`` lets it propagate. Interrupted before any chunk finished,
            it propagates in every case.

    Returns:
        :class:`Trained` ``(state, outputs, stopped, interrupted)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def halve(x, i, key, data, guard):
        ...     new = x / 2 + data
        ...     return new, new, jnp.isfinite(new)[None] if guard else None
        >>> t = run_steps(halve, jnp.asarray(0.0), steps=30, key=jax.random.key(0),
        ...               data=jnp.asarray(1.0))
        >>> round(float(t.state), 4), t.outputs.shape, t.stopped
        (2.0, (30,), None)
    """
    if on_interrupt not in ("warn", "return", "raise"):
        raise ValueError(f"run_steps(on_interrupt={on_interrupt!r}): must be 'warn', "
                         "'return' or 'raise'.")
    n_chunks, chunk = chunk_sizes(steps, updates)
    padded = n_chunks * chunk > steps
    shapes = jax.eval_shape(lambda s, k, d: step(s, jnp.asarray(0, jnp.int32), k, d, True),
                            state, key, data)
    out_shape, ok_shape = shapes[1], shapes[2]
    idle_outputs = lambda: jax.tree.map(_filler, out_shape)  # noqa: E731

    def fast_chunk(state, start, end, key, data):
        indices = start + jnp.arange(chunk, dtype=start.dtype)

        def body(s, i):
            def go(s):
                new, out, _ = step(s, i, key, data, False)
                return new, out
            if padded:  # steps past the end leave everything untouched
                return jax.lax.cond(i < end, go, lambda s: (s, idle_outputs()), s)
            return go(s)

        state, outputs = jax.lax.scan(body, state, indices)
        valid = indices < end
        finite = [jnp.all(jnp.isfinite(x) | ~valid.reshape((-1,) + (1,) * (x.ndim - 1)))
                  for x in _inexact_leaves(outputs)]
        ok = all_finite(state)
        if finite:
            ok = ok & jnp.all(jnp.stack(finite))
        return state, outputs, ok

    def guarded_chunk(carry, start, end, key, data):
        def body(c, i):
            def go(c):
                s, previous, bad, flags = c
                new, out, ok = step(s, i, key, data, True)
                good = jnp.all(ok)
                keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(good, x, y), a, b)  # noqa: E731
                return (keep(new, s), keep(s, previous), jnp.where(good, bad, i.astype(bad.dtype)),
                        jnp.where(good, flags, ok)), out
            # Steps past the end, or after a non-finite one, leave everything untouched.
            return jax.lax.cond((i < end) & (c[2] < 0), go, lambda c: (c, idle_outputs()), c)

        return jax.lax.scan(body, carry, start + jnp.arange(chunk, dtype=start.dtype))

    def guard_carry(state):
        return (state, state, jnp.asarray(-1, jnp.int32), jnp.ones(ok_shape.shape, bool))

    bar = progress if isinstance(progress, ProgressBar) else ProgressBar(
        steps, desc=label, enabled=bool(progress))
    first = int(start)
    starts = [jnp.asarray(first + c * chunk, jnp.int32) for c in range(n_chunks)]
    end = jnp.asarray(first + steps, jnp.int32)
    # The programs depend on the chunk's length and whether some chunk is padded, not on
    # the number of steps (where a run starts and ends are arguments).
    cache_key = lambda kind: None if program_key is None else (  # noqa: E731
        "training", label, kind, chunk, padded, *program_key)

    def compiled_guarded():
        with compiling(f"{label} (guarded replay)", bar.enabled) as programs:
            return programs.compile(jax.jit(guarded_chunk),
                                    (guard_carry(state), starts[0], end, key, data),
                                    key=cache_key("guarded"))

    # Compile before the bar opens, so that its clock counts steps only.
    with compiling(label, bar.enabled) as programs:
        fast = programs.compile(jax.jit(fast_chunk), (state, starts[0], end, key, data),
                                key=cache_key("fast"))
    bar.update(0, {})
    chunks: list = []
    stopped = None
    previous = state  # the state at the start of the chunk before (for the replay)
    committed = (0, state)  # (chunks done, the state they reached): one assignment each
    pending = None  # the chunk in flight: (its index, its outputs)
    interrupted = False
    # The first Ctrl-C sets a flag read after each chunk (inference.interrupt: a raised
    # KeyboardInterrupt can be lost in a callback); the second raises, to stop waiting.
    with interrupt.deferred() as pressed:
        try:
            for c in range(n_chunks):
                interrupt.check(pressed)  # a Ctrl-C between chunks: stop before the next
                done_chunk, ctrl_c = _to_the_end(fast, state, starts[c], end, key, data)
                ctrl_c = ctrl_c or pressed()
                pending = (c, done_chunk)
                new_state, outputs, ok = done_chunk
                if not bool(ok):  # one host sync per chunk
                    pending = None
                    # Replay from the chunk before (if any) with the guarded step, so that the
                    # state one step before the bad one is known even when the bad step is the
                    # chunk's first.
                    first_replayed = max(c - 1, 0)
                    carry = guard_carry(previous if c > 0 else state)
                    del chunks[first_replayed:]
                    replay = compiled_guarded()
                    for r in range(first_replayed, c + 1):
                        carry, outputs = replay(carry, starts[r], end, key, data)
                        chunks.append(outputs)
                        if int(carry[2]) >= 0:
                            break
                    if int(carry[2]) >= 0:
                        stopped = Stopped(int(carry[2]), np.asarray(carry[3]), carry[0], carry[1])
                        break
                    # The guarded replay found every step finite (the two programs may round
                    # differently): carry on from its state.
                    new_state = carry[0]
                else:
                    chunks.append(outputs)
                committed = (c + 1, new_state)
                pending = None
                previous, state = state, new_state
                done = min((c + 1) * chunk, steps)
                if after_chunk is not None:
                    after_chunk(new_state, done, _joined(chunks, done))
                if bar.enabled:
                    valid = jax.tree.map(lambda x: x[:done - c * chunk], outputs)
                    bar.update(done, postfix(valid) if postfix else {})
                if ctrl_c:  # came during the chunk, which has been kept
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if on_interrupt == "raise":
                raise
            interrupted = True
            n_done, state = committed
            if pending is not None and pending[0] == n_done:
                # Ctrl-C came while the chunk in flight ran: keep it if it ended finite.
                new_state, outputs, ok = pending[1]
                if bool(ok):
                    del chunks[n_done:]
                    chunks.append(outputs)
                    n_done, state = n_done + 1, new_state
            del chunks[n_done:]
            if n_done == 0:
                raise
        finally:
            bar.close()

    if interrupted:
        done = min(len(chunks) * chunk, steps)
        if after_chunk is not None:
            after_chunk(state, done, _joined(chunks, done))
        if on_interrupt == "warn":
            warnings.warn(
                f"{label}: interrupted (KeyboardInterrupt) after {done} of {steps} steps; "
                "returning the state reached.", UserWarning, stacklevel=user_stacklevel())
        return Trained(state, _joined(chunks, done), None, True)
    if stopped is None:
        return Trained(state, _joined(chunks, steps), None)
    return Trained(stopped.state, _joined(chunks, stopped.step + 1 - first), stopped)


def _to_the_end(fn: Callable, *args: Any) -> tuple[Any, bool]:
    """``(fn(*args) computed to its end, whether Ctrl-C came meanwhile)``.

    The call runs in a worker thread while this one waits, so that a Ctrl-C (delivered to
    the main thread) lets the chunk in flight finish and keeps its result; a chunk run in
    the calling thread (as on CPUs) would lose it. A second Ctrl-C stops waiting.
    """
    # Host values become arrays here, under this thread's settings (x64 is thread-local).
    args = jax.tree.map(
        lambda x: jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic, float, int, complex))
        else x, args)
    box: dict = {}
    finished = threading.Event()

    def work():
        try:
            box["out"] = jax.block_until_ready(fn(*args))
        except BaseException as err:  # noqa: BLE001 -- re-raised in the caller
            box["err"] = err
        finally:
            finished.set()

    ctrl_c = False
    # An Event, not Thread.join: a join interrupted by Ctrl-C marks a running thread as
    # stopped on Python 3.11 (the fix of bpo-45274 cannot tell whose lock it holds). The
    # start is inside: it waits for the thread to begin, and a Ctrl-C can come then too.
    worker = threading.Thread(target=work, name="run_steps chunk", daemon=True)
    try:
        worker.start()
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        if worker.ident is None:  # not started: no chunk in flight to wait for
            raise
        ctrl_c = True
        finished.wait()
    if "err" in box:
        raise box["err"]
    return box["out"], ctrl_c


def _joined(chunks: list, n: int) -> Any:
    """The first ``n`` steps' outputs of the chunks, concatenated."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *chunks)


def optax_step(value_and_grad: Callable, optimizer: optax.GradientTransformation) -> Step:
    """The step of :func:`minimize`: ``state = (params, opt_state)``, flags
    ``[value, gradient leaves..., updated leaves...]``.

    ``value_and_grad(params, key, data) -> (value, grads)`` with ``grads`` the direction to
    descend (the gradient of a loss); ``key`` is ``fold_in(run key, i)``.
    """

    def step(state, i, key, data, guard):
        params, opt_state = state
        value, grads = value_and_grad(params, jax.random.fold_in(key, i), data)
        value = jnp.asarray(value)
        upd, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, upd)
        ok = None
        if guard:
            ok = jnp.concatenate([jnp.isfinite(value)[None], leaf_flags(grads),
                                  leaf_flags(new_params)])
        return (new_params, new_opt), value, ok

    return step


def minimize(
    loss: Callable,
    params: Any,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    key: jax.Array,
    data: Any = (),
    updates: int = 20,
    progress: bool | ProgressBar = False,
    label: str = "train",
    program_key: tuple | None = None,
    advice: str = "check the data (finite, of moderate scale)",
    on_interrupt: str = "warn",
) -> FitResult:
    """Minimize ``loss(params, key, data)`` with ``optimizer`` by :func:`run_steps`.

    Step ``i`` gets ``fold_in(key, i)``. Raises :class:`NonFiniteError` naming the parameter
    leaf (``params['w']``) at the first step whose loss, gradient or update is not finite,
    with the last good params and optimizer state. Ctrl-C returns the parameters reached
    (``interrupted=True``, with a warning); ``on_interrupt`` is :func:`run_steps`'s (``"raise"``
    for a caller that stops its whole run).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> r = minimize(lambda p, k, d: (p - d) ** 2, jnp.asarray(0.0),
        ...              optimizer=optax.sgd(0.25), steps=20, key=jax.random.key(0),
        ...              data=jnp.asarray(3.0))
        >>> round(float(r.params), 3)
        3.0
    """
    names = leaf_names(params)
    step = optax_step(lambda p, k, d: jax.value_and_grad(loss)(p, k, d), optimizer)
    trained = run_steps(
        step, (params, optimizer.init(params)), steps=steps, key=key, data=data,
        updates=updates, progress=progress, label=label, program_key=program_key,
        postfix=lambda values: {"loss": float(jnp.mean(values))}, on_interrupt=on_interrupt,
    )
    if trained.stopped is not None:
        raise non_finite_error(label, trained.stopped, trained.outputs, names, advice=advice)
    return FitResult(trained.state[0], trained.outputs, opt_state=trained.state[1], key=key,
                     interrupted=trained.interrupted)
