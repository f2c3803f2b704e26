"""Running MCMC chains on a model: two compiled programs, driven in chunks from the host.

An MCMC method (``NUTS``, the Langevin methods) describes its chains with a :class:`Sampler`:
``init(key, positions) -> state`` and ``step(state, t, key) -> (state, position, stats)``
over all chains at once (a leading chain axis). :func:`run_chains` turns that into

1. an *init* program: initial points (Stan's uniform draws on the unconstrained scale,
   the first finite one per chain), then ``sampler.init``;
2. a *chunk* program: ``chunk`` steps from step ``t0``, writing the constrained draws and
   statistics of those steps into output buffers (chains, draws, ...) that it carries, in
   place (donated), so they stay on the devices the chains live on.

The host calls the chunk program about twenty times, moving the progress bar between calls.
So the programs carry no host callbacks and JAX's persistent cache can keep them, both are
compiled once per shape and kept in :data:`inference.compilation.PROGRAMS`, and the model's
data enter them as arguments (new data of the same shapes reuses them). Every step's key is
``fold_in(key, t)``, so the draws do not depend on the chunking.

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

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from inference.arguments import CONCRETE_ERRORS, split_arguments, static_part
from inference.compilation import compiling
from inference.initialization import raise_no_valid_initial, select_initial
from inference.progress import ProgressBar, chunk_sizes
from inference.sharding import constrain_leading, describe, gather
from ppl.potential import Potential
from ppl.potential import potential as make_potential
from ppl.potential import potential_from_trace

__all__ = ["Sampler", "run_chains"]

class Sampler(NamedTuple):
    """What an MCMC method gives :func:`run_chains` (all functions over batched chains).

    Attributes:
        init: ``init(key, positions) -> state`` from valid unconstrained positions with a
            leading chain axis (a method that tunes before its loop, such as the Langevin
            methods, does its warmup here).
        step: ``step(state, t, key) -> (state, position, stats)``: one step of every chain
            at loop step ``t`` (an int32 scalar); ``stats`` maps ArviZ names to (chains,).
        loop_warmup: the first ``loop_warmup`` loop steps are warmup (draws discarded).
        num_steps: loop steps in all (``loop_warmup`` + kept draws).
        tuning: ``tuning(state) -> dict`` of what warmup chose (step size, mass matrix...).
        postfix: ``postfix(state) -> dict`` of scalars shown beside the progress bar.
        init_warmup: warmup steps done inside ``init`` (for the progress bar's count).
    """

    init: Callable
    step: Callable
    loop_warmup: int
    num_steps: int
    tuning: Callable
    postfix: Callable | None = None
    init_warmup: int = 0


def _with_data(pot: Potential, data: Any) -> Potential:
    args, kwargs = data
    return dataclasses.replace(pot, args=tuple(args), kwargs=dict(kwargs))


def _all_static(tree: Any) -> tuple[list, Callable[[list], Any]]:
    return [], lambda _: tree


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
) -> tuple[dict, dict, dict, dict]:
    """Run ``method`` (an object with ``sampler(...)``) on ``model(*args, **kwargs)``.

    Returns ``(samples, stats, tuning, timing)``: constrained draws of every latent and
    deterministic site and per-draw statistics, shape (chains, draws, ...); what warmup
    chose; and ``timing`` with ``compile`` and ``run`` seconds, ``devices`` and ``cache``
    (where the programs came from: ``memory``, ``disk``, ``miss`` or ``off``).

    With a device ``mesh`` (:func:`inference.sharding.mesh_for`) the chain axis is split
    over its devices. ``trace``: the model's trace if the caller has one
    (:func:`ppl.tracing.trace_model`), to save running the model again.
    """
    pot = (make_potential(model, *args, **kwargs) if trace is None
           else potential_from_trace(model, tuple(args), dict(kwargs), trace))
    stochastic = getattr(method, "stochastic_gradients", False)
    label = type(method).__name__
    updates = 20
    data = (tuple(args), dict(kwargs))
    try:
        return _run(method, pot, data, split_arguments(data), key, num_warmup, num_samples,
                    num_chains, progress, mesh, stochastic, label, updates, tries, radius)
    except CONCRETE_ERRORS:
        # The model reads its data's values in Python: compile with the data baked in (a
        # new program for new data, as NumPyro does).
        return _run(method, pot, data, _all_static(data), key, num_warmup, num_samples,
                    num_chains, progress, mesh, stochastic, label, updates, tries, radius)


def _run(method, pot, data, split, key, W, S, C, progress, mesh, stochastic, label, updates,
         tries, radius):
    dyn, rebuild = split
    static = static_part(data) if dyn else ("constants", data)
    init_key, run_key = jax.random.split(key)

    def make_sampler(p: Potential) -> tuple[Sampler, Callable]:
        """The method's sampler on ``p``, and the density initial points are checked on."""
        if stochastic:
            # The kernel differentiates a fresh minibatch each step; initial points are
            # checked on one fixed minibatch.
            fixed = jax.random.key(0)
            return method.sampler(p.logdensity_estimate, W, S), \
                lambda x: p.logdensity_estimate(x, fixed)
        return method.sampler(p.logdensity_fn, W, S), p.logdensity_fn

    # On the host: the loop's length (it decides the chunking), tuning and postfix.
    host = make_sampler(pot)[0]
    num_steps, skip = host.num_steps, host.loop_warmup
    n_chunks, chunk = chunk_sizes(max(num_steps, 1), updates)
    padded = n_chunks * chunk > num_steps

    def traced(dyn) -> tuple[Potential, Sampler, Callable]:
        p = _with_data(pot, rebuild(dyn))
        return (p, *make_sampler(p))

    # Everything a program uses must be an argument or part of its cache key: nothing
    # per-call (keys, data) may be closed over.
    def draw(p, sampler, state, t, run_key):
        """One loop step: the new state, constrained draws and stats of every chain."""
        state, position, stats = sampler.step(state, t, jax.random.fold_in(run_key, t))
        constrain = jax.vmap(p.to_constrained)
        if skip == 0:
            return state, (constrain(position), stats)
        # Constraining runs the model forward (deterministic sites): skip it during warmup,
        # whose draws are discarded (slot 0 is overwritten by the first kept draw).
        blank = lambda x: jax.tree.map(  # noqa: E731
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(constrain, x))
        values = jax.lax.cond(t >= skip, constrain, blank, position)
        return state, (values, stats)

    def init_program(init_key, run_key, dyn):
        p, sampler, check = traced(dyn)
        keys = jax.random.split(init_key, max(len(p.sites), 1))
        candidates = {
            name: jax.random.uniform(k, (C, tries) + shape, minval=-radius, maxval=radius)
            for k, (name, shape) in zip(keys, p.sites.items())
        }
        positions, found = select_initial(check, candidates)
        positions = constrain_leading(positions, mesh, C)
        start = lambda x: sampler.init(run_key, x)  # noqa: E731
        blank = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(start, positions))
        state = jax.lax.cond(jnp.all(found), start, lambda _: blank, positions)
        # Output buffers, (chains, draws, ...), written in place by the chunks.
        shapes = jax.eval_shape(lambda st, t, k: draw(p, sampler, st, t, k), state,
                                jnp.zeros((), jnp.int32), run_key)[1]
        buffers = jax.tree.map(
            lambda s: jnp.zeros((C, S) + s.shape[1:], s.dtype), shapes)
        return constrain_leading((state, buffers), mesh, C), found, candidates

    def chunk_program(carry, t0, run_key, dyn):
        p, sampler, _ = traced(dyn)

        def one(carry, t):
            state, buffers = carry
            state, out = draw(p, sampler, state, t, run_key)
            # Warmup steps write slot 0, which the first kept draw overwrites.
            slot = jnp.maximum(t - skip, 0)
            put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 1)  # noqa: E731
            return state, jax.tree.map(put, buffers, out)

        def body(carry, i):
            t = t0 + i
            if padded:  # steps past the end leave everything untouched
                return jax.lax.cond(t < num_steps, one, lambda c, _: c, carry, t), None
            return one(carry, t), None

        carry = jax.lax.scan(body, carry, jnp.arange(chunk, dtype=jnp.int32))[0]
        return constrain_leading(carry, mesh, C)

    key_parts = (pot.model, method, static, W, S, C, tries, radius, mesh)
    t_start = time.perf_counter()
    t0 = jnp.zeros((), jnp.int32)
    with compiling(label, progress) as programs:
        init_c = programs.compile(jax.jit(init_program), (init_key, run_key, dyn),
                                  key=("init", *key_parts))
        carry, found, candidates = init_c(init_key, run_key, dyn)
        chunk_c = programs.compile(jax.jit(chunk_program, donate_argnums=0),
                                   (carry, t0, run_key, dyn),
                                   key=("chunk", chunk, *key_parts), key_args=(run_key, dyn))
    compile_s = programs.seconds
    found = np.asarray(gather(found))
    if not bool(np.all(found)):
        raise_no_valid_initial(pot, gather(candidates), found, radius)

    bar = ProgressBar(host.init_warmup + num_steps, desc=label, enabled=progress,
                      phases=[("warmup", host.init_warmup + skip), ("sample", S)])
    try:
        bar.update(host.init_warmup, {})
        for c in range(n_chunks):
            carry = chunk_c(carry, jnp.asarray(c * chunk, jnp.int32), run_key, dyn)
            if bar.enabled:
                extra = host.postfix(carry[0]) if host.postfix is not None else {}
                bar.update(host.init_warmup + min((c + 1) * chunk, num_steps),
                           jax.device_get(extra))
        jax.block_until_ready(carry)
    finally:
        bar.close()
    run_s = time.perf_counter() - t_start - compile_s
    state, (samples, stats) = carry
    # On several hosts each process holds its devices' chains: fetched once, here.
    samples, stats, tuning = gather((samples, stats, host.tuning(state)))
    return samples, stats, tuning, {"compile": compile_s, "run": run_s,
                                    "devices": describe(mesh), "cache": programs.cache}
