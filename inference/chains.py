"""Running MCMC chains on a model: one compiled program, driven in chunks from the host.

An MCMC method (``NUTS``, the Langevin methods) describes its chains with a :class:`Sampler`:
``init(key, positions) -> state`` and ``step(state, t, key) -> (state, position, stats)``
over all chains at once (a leading chain axis). :func:`run_chains` turns that into one
program that loops steps ``t0`` to ``t1`` (given at each call), writing the constrained
draws and statistics of those steps into output buffers (chains, draws, ...) that it
carries, in place (donated), so they stay on the devices the chains live on. Its first
call (no loop step) starts the chains: initial points (Stan's uniform draws on the
unconstrained scale, the first finite one per chain, or the user's ``init_params``), then
``sampler.init``. Starting and stepping are compiled together, once: a model's density and
the sampler's code are compiled in one program rather than in two (measured: the enumerated HMM of
``bench/enum.py`` compiles in ~15% less CPU time).

The host calls the program at least twenty times, moving the progress bar between
calls: the first call is short, later ones are sized from the measured speed to take about
a second (:data:`CHUNK_SECONDS`), never more than a twentieth of the run.
So the program carries no host callbacks and JAX's persistent cache can keep it, it is
compiled once per shape and kept in :data:`inference.programs.cache.PROGRAMS`, and the model's
data enter them as arguments (new data of the same shapes reuses them). Every step's key is
``fold_in(key, t)`` and every call runs the same program, so the draws do not depend on
the chunking.

Recoverable runs. The host loop stops cleanly between chunks:

* Ctrl-C (``KeyboardInterrupt``) waits for the chunk in flight (about a second), then
  returns the draws made so far with a warning (re-raised if warmup was not finished:
  there are no draws yet).
* The final sampler state comes back with the draws (``ChainOutputs.state``, a
  :class:`inference.checkpoint.ChainState`); :func:`continue_chains` runs the same chains
  further from it, with the tuned step size and mass matrix and no new warmup. Loop step
  ``t`` always uses ``fold_in(key, t)``, so continuing by ``n`` draws gives bit for bit the
  draws a run ``n`` draws longer would have made.
* ``checkpoint=path`` writes the state and draws so far every ``checkpoint_every`` loop
  steps (and when the run ends or is interrupted); running the same call again resumes from
  the file, giving the same arrays as an uninterrupted run.

Example:
    >>> import jax, numpyro.distributions as dist, ppl, inference
    >>> def model():
    ...     ppl.sample("x", dist.Normal(0.0, 1.0))
    >>> samples, stats, tuning, timing = run_chains(
    ...     inference.NUTS(), model, (), {}, key=jax.random.key(0), num_warmup=100,
    ...     num_samples=50, num_chains=2, progress=False)
    >>> samples["x"].shape, stats["n_grad"].shape
    ((2, 50), (2, 50))
"""

from __future__ import annotations

import os
import re
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from inference import checkpoint as ckpt
from inference import interrupt
from inference.chain_target import PotentialTarget
from inference.arguments import CONCRETE_ERRORS, positive_int, split_arguments, static_part
from inference.programs.cache import compiling
from inference.programs.fingerprint import Unfingerprintable, fingerprint
from inference.progress import ProgressBar, chunk_sizes
from inference.sharding import constrain_leading, describe, gather, put_leading
from inference.stacklevel import user_stacklevel
from ppl.potential import potential as make_potential
from ppl.potential import potential_from_trace

__all__ = ["Sampler", "ChainOutputs", "run_chains", "continue_chains"]

UPDATES = 20  # at least this many chunk calls (progress-bar updates) per run
FIRST_CHUNK = 10  # loop steps in the first call (the speed is not known yet)
CHUNK_SECONDS = 1.0  # later calls are sized to take about this long


class Sampler(NamedTuple):
    """What an MCMC method gives :func:`run_chains` (all functions over batched chains).

    Attributes:
        init: ``init(key, positions) -> state`` from valid unconstrained positions with a
            leading chain axis (a method that tunes before its loop, such as the Langevin
            methods, does its warmup here).
        step: ``step(state, t, key) -> (state, position, stats)``: one step of every chain
            at loop step ``t`` (an int32 scalar); ``stats`` maps ArviZ names to (chains,).
            Past warmup it must not depend on ``num_samples`` (chains are continued with it).
        loop_warmup: the first ``loop_warmup`` loop steps are warmup (draws discarded).
        num_steps: loop steps in all (``loop_warmup`` + kept draws).
        tuning: ``tuning(state) -> dict`` of what warmup chose (step size, mass matrix...).
        postfix: ``postfix(state) -> dict`` of scalars shown beside the progress bar.
        init_warmup: warmup steps done inside ``init`` (for the progress bar's count).
        init_from_gradient: optional ``init_from_gradient(key, positions, logdensity,
            gradient) -> state``, as ``init`` where it needs the log density and its
            gradient at the positions only: the initial-point search hands over the values
            it computed there, so the program holds the gradient's code once less.
    """

    init: Callable
    step: Callable
    loop_warmup: int
    num_steps: int
    tuning: Callable
    postfix: Callable | None = None
    init_warmup: int = 0
    init_from_gradient: Callable | None = None


class ChainOutputs(tuple):
    """``(samples, stats, tuning, timing)`` (it unpacks as that 4-tuple) with the chains'
    final ``state`` (a :class:`inference.checkpoint.ChainState`) attached."""

    state: ckpt.ChainState | None

    def __new__(cls, samples, stats, tuning, timing, state=None):
        self = super().__new__(cls, (samples, stats, tuning, timing))
        self.state = state
        return self


def _all_static(tree: Any) -> tuple[list, Callable[[list], Any]]:
    return [], lambda _: tree


def _target(method, model, args, kwargs, trace, target):
    """The chain target (:mod:`inference.chain_target`): ``target`` if given, else the
    model's potential."""
    if target is not None:
        return target
    pot = (make_potential(model, *args, **kwargs) if trace is None
           else potential_from_trace(model, tuple(args), dict(kwargs), trace))
    return PotentialTarget(pot, bool(getattr(method, "stochastic_gradients", False)))


def _with_fallback(run: Callable, data: tuple) -> ChainOutputs:
    try:
        return run(split_arguments(data))
    except CONCRETE_ERRORS:
        # The model reads its data's values in Python: compile with the data baked in (a
        # new program for new data, as NumPyro does).
        return run(_all_static(data))


def run_chains(
    method: Any,
    model: Callable,
    args: tuple,
    kwargs: dict,
    *,
    key: jax.Array,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    progress: bool = True,
    mesh: Any = None,
    tries: int = 100,
    radius: float = 2.0,
    trace: dict | None = None,
    init_params: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    target: Any = None,
) -> ChainOutputs:
    """Run ``method`` (an object with ``sampler(...)``) on ``model(*args, **kwargs)``.

    Returns ``(samples, stats, tuning, timing)``: constrained draws of every latent and
    deterministic site and per-draw statistics, shape (chains, draws, ...); what warmup
    chose; and ``timing`` with ``compile`` and ``run`` seconds, ``devices`` and ``cache``
    (where the programs came from: ``memory``, ``disk``, ``miss`` or ``off``). The final
    sampler state is its ``.state`` (for :func:`continue_chains`).

    With a device ``mesh`` (:func:`inference.sharding.mesh_for`) the chain axis is split
    over its devices. ``trace``: the model's trace if the caller has one
    (:func:`ppl.tracing.trace_model`), to save running the model again. ``init_params``:
    constrained starting values (see :mod:`inference.starting_points`). ``checkpoint``: a
    file to write the state and draws to every ``checkpoint_every`` loop steps (default:
    a twentieth of the run); if it exists it is resumed from (it must come from
    the same call: same method, counts, key and data). ``target``: what the chains move
    in (:mod:`inference.chain_target`; default the model's potential).
    """
    if checkpoint is None and checkpoint_every is not None:
        raise ValueError("checkpoint_every is given but checkpoint is not: pass "
                         "checkpoint='run.npz' (the file to write) as well.")
    if checkpoint_every is not None:
        checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
    target = _target(method, model, args, kwargs, trace, target)
    data = (tuple(args), dict(kwargs))
    given = None if init_params is None else target.starts(init_params, num_chains)
    job = _Job(method, target, data, num_warmup, num_chains, mesh)
    return _with_fallback(lambda split: job.run(
        split, key, num_samples, progress, tries, radius, given, checkpoint, checkpoint_every),
        data)


def continue_chains(
    method: Any,
    model: Callable,
    args: tuple,
    kwargs: dict,
    *,
    state: ckpt.ChainState,
    num_samples: int,
    key: jax.Array | None = None,
    progress: bool = True,
    mesh: Any = None,
    target: Any = None,
) -> ChainOutputs:
    """``num_samples`` more draws of the chains in ``state`` (a run's ``.state``).

    No warmup: the chains go on from their last positions with the step size and mass
    matrix warmup chose. With ``key=None`` they go on with the run's own keys (step ``t``
    uses ``fold_in(run_key, t)``), so the draws are those a longer run would have made; a
    ``key`` gives other draws (step ``t`` then uses ``fold_in(key, t)``).
    """
    num_samples = positive_int("num_samples", num_samples)
    target = _target(method, model, args, kwargs, None, target)
    data = (tuple(args), dict(kwargs))
    job = _Job(method, target, data, state.num_warmup, state.num_chains, mesh)
    return _with_fallback(lambda split: job.extend(split, state, num_samples, key, progress),
                          data)


class _Job:
    """The parts of a run that do not change: the chain target, method, counts, mesh."""

    def __init__(self, method, target, data, W, C, mesh):
        self.method, self.target, self.data = method, target, data
        self.W, self.C, self.mesh = W, C, mesh
        self.label = type(method).__name__

    # -- the programs ------------------------------------------------------------------

    def _prepare(self, split, S):
        dyn, rebuild = split
        self.dyn, self.rebuild = dyn, rebuild
        self.static = static_part(self.data) if dyn else ("constants", self.data)
        self.host = self.target.sampler(self.method, self.W, S)[0]
        self.skip = self.host.loop_warmup
        self.key_parts = (self.target.model, self.target.program_key, self.method, self.static, self.W, S, self.C, self.mesh)

    def _traced(self, dyn, S):
        p = self.target.with_data(*self.rebuild(dyn))
        return (p, *p.sampler(self.method, self.W, S))

    def _draw(self, p, sampler, state, t, run_key):
        """One loop step: the new state, constrained draws and stats of every chain."""
        state, position, stats = sampler.step(state, t, jax.random.fold_in(run_key, t))
        constrain = jax.vmap(p.to_constrained)
        if self.skip == 0:
            return state, (constrain(position), stats)
        # Constraining runs the model forward (deterministic sites): skip it during warmup,
        # whose draws are discarded (slot 0 is overwritten by the first kept draw).
        blank = lambda x: jax.tree.map(  # noqa: E731
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(constrain, x))
        values = jax.lax.cond(t >= self.skip, constrain, blank, position)
        return state, (values, stats)

    def _buffers(self, p, sampler, state, run_key, S):
        """Output buffers, (chains, draws, ...), written in place by the chunks."""
        shapes = jax.eval_shape(lambda st, t, k: self._draw(p, sampler, st, t, k), state,
                                jnp.zeros((), jnp.int32), run_key)[1]
        return jax.tree.map(lambda s: jnp.zeros((self.C, S) + s.shape[1:], s.dtype), shapes)

    def _carry_shapes(self, run_key, S):
        """Shapes of the programs' carry ``(sampler state, buffers)`` (traced, not run)."""
        def carry(run_key, dyn):
            p, sampler, _ = self._traced(dyn, S)
            positions = {n: jnp.zeros((self.C,) + tuple(shape), p.dtypes[n])
                         for n, shape in p.sites.items()}
            state = sampler.init(run_key, positions)
            return state, self._buffers(p, sampler, state, run_key, S)

        return jax.eval_shape(carry, run_key, self.dyn)

    def _start(self, p, sampler, check, blank, run_key, init_key, given, use_given, tries,
               radius):
        """The chains' initial state: ``(state, found, n_grad)`` (``blank`` where some chain
        found no valid point: the host then raises)."""
        # init_params: the given point is the one candidate tried.
        search = p.search(check, init_key, self.C, tries, radius, given, use_given)
        positions = constrain_leading(search.position, self.mesh, self.C)
        if sampler.init_from_gradient is not None and p.uses_gradient_start:
            start = lambda x: sampler.init_from_gradient(  # noqa: E731
                run_key, x, search.logdensity, search.gradient)
        else:
            start = lambda x: sampler.init(run_key, x)  # noqa: E731
        state = jax.lax.cond(jnp.all(search.found), start, lambda _: blank, positions)
        return state, search.found, search.n_grad

    def _program(self, S, tries, radius, with_start):
        """The one compiled program: loop steps ``t0 .. t1 - 1`` (any number: the host sizes
        each call), writing their draws in place. ``with_start``: its first call (``first``
        True, ``t0 == t1``) finds the initial points and starts the sampler there, so the
        search and the sampler's steps are compiled together, once."""
        C, mesh, skip = self.C, self.mesh, self.skip

        def run_steps(p, sampler, carry, t0, t1, base, run_key):
            def one(t, carry):
                state, buffers = carry
                state, out = self._draw(p, sampler, state, t, run_key)
                # Slot t - base; warmup steps write slot 0, which the first kept draw
                # overwrites.
                slot = jnp.maximum(t - jnp.maximum(base, skip), 0)
                put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 1)  # noqa: E731
                return state, jax.tree.map(put, buffers, out)

            return constrain_leading(jax.lax.fori_loop(t0, t1, one, carry), mesh, C)

        def chunk_program(carry, t0, t1, base, run_key, dyn):
            p, sampler, _ = self._traced(dyn, S)
            return run_steps(p, sampler, carry, t0, t1, base, run_key)

        def program(carry, t0, t1, base, run_key, dyn, init_key, given, use_given, first):
            p, sampler, check = self._traced(dyn, S)

            def start(carry):
                state, found, n = self._start(p, sampler, check, carry[0], run_key, init_key,
                                              given, use_given, tries, radius)
                return (state, carry[1]), found, n

            keep = lambda carry: (carry, jnp.ones((C,), bool), jnp.zeros((C,), jnp.int32))  # noqa: E731
            carry, found, n_grad = jax.lax.cond(first, start, keep, carry)
            return run_steps(p, sampler, carry, t0, t1, base, run_key), found, n_grad

        return program if with_start else chunk_program

    def _compile(self, programs, run_key, S, tries=100, radius=2.0, with_start=True):
        """The compiled program (from a cache when there), and its carry's shapes."""
        program = self._program(S, tries, radius, with_start)
        t0, no = _host_zeros((), np.int32), _host_zeros((), bool)
        extra = (run_key, self._no_given(), no, no)  # (init_key, given, use_given, first)
        rest = (t0, t0, t0, run_key, self.dyn) + (extra if with_start else ())
        compiled = programs.compile(
            jax.jit(program, donate_argnums=0),
            lambda: (self._carry_shapes(run_key, S),) + rest,  # traced only when compiling
            key=("chains", with_start, tries, radius, self.skip, *self.key_parts),
            key_args=rest)
        return compiled, compiled.args_info[0][0]

    def _no_given(self):
        dtypes = self.target.dtypes
        return {n: _host_zeros((self.C,) + tuple(shape), dtypes[n])
                for n, shape in self.target.sites.items()}

    def _zeros(self, like):
        """A carry of zeros shaped as ``like`` (the compiled program's carry argument)."""
        zeros = jax.tree.map(lambda a: _host_zeros(a.shape, a.dtype), like)
        return put_leading(zeros, self.mesh, self.C)

    # -- the host loop -----------------------------------------------------------------
    def _loop(self, chunk, carry, t, end, base, bar, offset, save):
        """Chunks from loop step ``t`` to ``end``: ``(carry, step reached, interrupted)``.

        The first chunk is short; later ones are sized from the measured speed to take about
        ``CHUNK_SECONDS`` (never more than a twentieth of the run), so the progress bar moves
        and a Ctrl-C is answered within about that time.
        """
        latest = (carry, t)
        as_int = lambda v: np.asarray(v, np.int32)  # noqa: E731  (no device op: no tiny compile)
        most = chunk_sizes(max(end - t, 1), UPDATES)[1]
        size = min(most, FIRST_CHUNK)
        # The first Ctrl-C sets a flag read after each chunk (inference.interrupt: a raised
        # KeyboardInterrupt can be lost in a callback); the second raises at once.
        with interrupt.deferred() as pressed:
            try:
                while latest[1] < end:
                    interrupt.check(pressed)
                    carry, t = latest
                    stop = min(t + size, end)
                    started = time.perf_counter()
                    latest = (chunk(carry, as_int(t), as_int(stop), as_int(base)), stop)
                    # Wait for the chunk: a Ctrl-C then stops after it, not after the whole run.
                    jax.block_until_ready(latest[0])
                    rate = (stop - t) / max(time.perf_counter() - started, 1e-6)
                    size = int(min(most, 2 * size, max(1, rate * CHUNK_SECONDS)))
                    if save is not None:
                        save(*latest)
                    extra = (self.host.postfix(latest[0][0])
                             if bar.enabled and self.host.postfix is not None else {})
                    bar.update(offset + latest[1], jax.device_get(extra))
            except KeyboardInterrupt:
                carry, t = latest
                if any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(carry)):
                    raise  # the interrupted call had already taken its input
                jax.block_until_ready(carry)
                return carry, t, True
            finally:
                bar.close()
        return latest[0], latest[1], False

    def _state(self, carry_state, run_key, t, draws, requested) -> ckpt.ChainState:
        leaves, treedef = jax.tree_util.tree_flatten(gather(carry_state))
        return ckpt.ChainState(
            [ckpt.to_host(x) for x in leaves], treedef, ckpt.to_host(jax.random.key_data(run_key)),
            str(jax.random.key_impl(run_key)), int(t), self.W, self.C, int(draws), int(requested))

    def _outputs(self, carry, run_key, t, S, programs, t_start, interrupted, requested,
                 state_offset=0):
        run_s = time.perf_counter() - t_start - programs.seconds
        state, (samples, stats) = carry
        draws = min(max(t - max(self.skip, state_offset), 0), S)
        samples, stats, tuning = gather((samples, stats, self.host.tuning(state)))
        if draws < S:
            samples, stats = jax.tree.map(lambda x: x[:, :draws], (samples, stats))
        timing = {"compile": programs.seconds, "run": run_s, "devices": describe(self.mesh),
                  "cache": programs.cache}
        chain_state = self._state(state, run_key, t, draws, requested)
        if interrupted:
            warnings.warn(
                f"{self.label}: interrupted (KeyboardInterrupt) after {draws} of {requested} "
                f"draws per chain; returning those. result.extend({requested - draws}) "
                "continues the chains.", UserWarning, stacklevel=user_stacklevel())
        return ChainOutputs(samples, stats, tuning, timing, chain_state)

    # -- a run from the start (or from its checkpoint) ---------------------------------
    def run(self, split, key, S, progress, tries, radius, given, path, every):
        self._prepare(split, S)
        init_key, run_key = jax.random.split(key)
        num_steps = self.host.num_steps
        use_given = given is not None
        dtypes = self.target.dtypes
        given_arg = (self._no_given() if given is None else
                     {n: jax.device_put(np.asarray(v, dtypes[n])) for n, v in given.items()})
        start_args = (init_key, given_arg, np.asarray(use_given))
        fingerprint = self._fingerprint(key, S, tries, radius, given) if path else None
        t_start = time.perf_counter()
        with compiling(self.label, progress) as programs:
            program_c, like = self._compile(programs, run_key, S, tries, radius)
        restored = self._restore(path, fingerprint, like) if path else None

        def chunk(carry, t0, t1, base, first=False):
            return program_c(carry, t0, t1, base, run_key, self.dyn, *start_args,
                             np.asarray(first))

        if restored is None:
            # The first call only starts the chains (no loop step).
            zero = np.zeros((), np.int32)
            carry, found, n_grad = chunk(self._zeros(like), zero, zero, zero, first=True)
            found = np.asarray(gather(found))
            if not bool(np.all(found)):
                self.target.raise_not_found(init_key, self.C, tries, radius, given, found)
            t, self.search_n_grad = 0, np.asarray(gather(n_grad))
        else:
            (carry, t), self.search_n_grad = restored

        every = every or max(num_steps // UPDATES, 1)
        last = [t]

        def checkpoint(carry, t, force=False):
            if force or t - last[0] >= every or t == num_steps:
                self._write(path, fingerprint, carry, t)
                last[0] = t

        save = checkpoint if path is not None else None

        init_warmup = self.host.init_warmup
        bar = ProgressBar(init_warmup + num_steps, desc=self.label, enabled=progress,
                          phases=[("warmup", init_warmup + self.skip), ("sample", S)])
        bar.update(init_warmup + t, {})
        carry, t, interrupted = self._loop(lambda *a: chunk(*a)[0], carry, t, num_steps,
                                           self.skip, bar, init_warmup, save)
        if interrupted and save is not None:
            save(carry, t, force=True)
        if interrupted and t <= self.skip:
            where = (f"during warmup (step {t} of {self.skip})" if self.skip
                     else "before its first draw")
            raise KeyboardInterrupt(
                f"{self.label} was interrupted {where}: no draws yet"
                + (f"; the checkpoint {os.fspath(path)!r} resumes it" if path else ""))
        out = self._outputs(carry, run_key, t, S, programs, t_start, interrupted, S)
        # Gradients before the first kept draw include the initial-point search's.
        tuning = out[2]
        tuning["warmup_n_grad"] = (np.asarray(tuning.get("warmup_n_grad", 0))
                                   + self.search_n_grad).astype(np.int32)
        return out

    def _fingerprint(self, key, S, tries, radius, given) -> dict:
        # A function's repr holds its address, new in each process (a Gibbs block's factory).
        method = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.method))
        return {"method": method, "num_warmup": self.W, "num_samples": S,
                "num_chains": self.C, "key": ckpt.to_host(jax.random.key_data(key)).tolist(),
                "tries": tries, "radius": radius, "data": ckpt.data_digest(self.data),
                "init_params": None if given is None else ckpt.data_digest(given),
                "model": _model_digest(self.target),
                # The method's code too: a Gibbs block's factory prints as <lambda> whatever
                # its body, so the repr above cannot tell two of them apart.
                "method_code": _stable_digest(self.method),
                "sites": {n: list(s) for n, s in self.target.sites.items()},
                "x64": bool(jax.config.jax_enable_x64)}

    def _write(self, path, fingerprint, carry, t) -> None:
        """The sampler's state and the draws made so far (only the filled slots)."""
        state, buffers = gather(carry)
        filled = max(int(t) - self.skip, 0)
        arrays = {f"state{i}": ckpt.to_host(x) for i, x in enumerate(jax.tree.leaves(state))}
        arrays.update({f"draws{i}": ckpt.to_host(x[:, :filled])
                       for i, x in enumerate(jax.tree.leaves(buffers))})
        arrays["search_n_grad"] = np.asarray(self.search_n_grad, np.int32)
        ckpt.write_archive(path, arrays, {
            "kind": "checkpoint", "run": fingerprint, "t": int(t),
            "num_state": len(jax.tree.leaves(state)),
            "num_draws": len(jax.tree.leaves(buffers))})

    def _restore(self, path, fingerprint, like):
        """``((carry, loop step), search gradients)`` stored in the checkpoint ``path``, or
        None if there is no file; ``like``: the carry's shapes."""
        if not os.path.exists(path):
            return None
        arrays, meta = ckpt.read_checkpoint(path, fingerprint)
        like_state, like_buffers = like
        state = ckpt.unflatten_like(like_state, [arrays[f"state{i}"] for i in range(meta["num_state"])],
                           path)
        buffers = [arrays[f"draws{i}"] for i in range(meta["num_draws"])]
        S = jax.tree.leaves(like_buffers)[0].shape[1]
        # Slots not yet drawn are zeros, as the first call leaves them.
        buffers = [np.concatenate([b, np.zeros((b.shape[0], S - b.shape[1]) + b.shape[2:],
                                               b.dtype)], axis=1) for b in buffers]
        buffers = ckpt.unflatten_like(like_buffers, buffers, path)
        searched = arrays.get("search_n_grad", np.zeros(self.C, np.int32))
        return (put_leading((state, buffers), self.mesh, self.C), int(meta["t"])), searched

    # -- more draws from where a run stopped -------------------------------------------
    def extend(self, split, state, n, key, progress):
        self._prepare(split, n)
        if state.t < self.skip:
            raise ValueError("this state is from a run stopped during warmup; it cannot be "
                             "continued without warmup.")
        run_key = state.run_key() if key is None else key
        t_start = time.perf_counter()
        with compiling(self.label, progress) as programs:
            chunk_c, like = self._compile(programs, run_key, n, with_start=False)
        if state.treedef is not None:  # else loaded from a file: the structure of `like`
            like = (jax.tree_util.tree_unflatten(state.treedef, state.leaves), like[1])
        chain_state = ckpt.unflatten_like(like[0], state.leaves, "the saved state")
        carry = (put_leading(chain_state, self.mesh, self.C), self._zeros(like[1]))
        bar = ProgressBar(n, desc=self.label, enabled=progress, phases=[("sample", n)])
        end = state.t + n
        chunk = lambda c, t0, t1, base: chunk_c(c, t0, t1, base, run_key, self.dyn)  # noqa: E731
        carry, t, interrupted = self._loop(chunk, carry, state.t, end, state.t, bar, -state.t,
                                           None)
        if interrupted and t == state.t:
            raise KeyboardInterrupt(f"{self.label}: interrupted before the first new draw")
        out = self._outputs(carry, run_key, t, n, programs, t_start, interrupted, n,
                            state_offset=state.t)
        out.state.draws, out.state.requested = (state.draws + out.state.draws,
                                                state.draws + n)
        return out


def _stable_digest(obj: Any) -> str | None:
    """:func:`inference.programs.fingerprint.fingerprint`'s stable digest of ``obj`` (by code
    and values, the same in every process), or ``None`` where it cannot be taken."""
    try:
        return fingerprint(obj).stable
    except Unfingerprintable:
        return None


def _model_digest(target: Any) -> str | None:
    """A digest of the model's code and the values it reads (and of what the target bakes
    into the programs), the same in every process: a checkpoint is not resumed with an
    edited model (or, for NeuTra, another fitted flow). ``None`` where it cannot be taken."""
    try:
        return fingerprint(target.model, target.program_key).stable
    except Unfingerprintable:
        return None


def _host_zeros(shape: tuple, dtype: Any) -> jax.Array:
    """Zeros made on the host (``jnp.zeros`` compiles a small program per shape: a few
    tenths of a second each on the CPU)."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        like = jax.eval_shape(lambda: jax.random.key_data(jnp.zeros(shape, dtype)))
        return jax.random.wrap_key_data(np.zeros(like.shape, like.dtype),
                                        impl=jax.random.key_impl(jnp.zeros((), dtype)))
    return jax.device_put(np.zeros(shape, dtype))
