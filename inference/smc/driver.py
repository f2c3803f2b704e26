"""Running the ``SMC`` method on a model: the stages in host-driven chunks, checkpoints,
Ctrl-C, and more draws from a finished run.

Two compiled programs, all chains ``vmap``-ped in each:

1. *run*: the stages from where each chain stands up to a stage index given at the call
   (a ``while_loop`` that stops early where a chain is done); its first call makes the
   chains' states instead (prior draws, the invalid-data checks, the tempering's start:
   one program with the stages, which compiles faster than two);
2. *finish*: ``num_samples`` distinct particles per chain, constrained, with their statistics.

The host calls the run program until every chain is done: the first chunk is one stage,
later ones are sized from the measured speed to take about a second
(:data:`CHUNK_SECONDS`). A stage computes the same whatever call it runs in (its keys come
from the chain's state), so the draws do not depend on the chunking: an interrupted run
resumed from its checkpoint gives, bit for bit, the draws of an uninterrupted one.

* Ctrl-C (``KeyboardInterrupt``) is answered at the end of the chunk in flight: tempering
  has no partial posterior before the inverse temperature reaches 1, so the interrupt
  propagates, with a message saying at which stage and temperature each chain stood and
  how to resume (the state is written to ``checkpoint`` first when one is given).
* ``checkpoint=path`` writes every chain's population (particles, log-likelihoods,
  temperature, evidence so far, step size, key, records) every ``checkpoint_every`` stages
  (default: every stage) and at the end; the same call again resumes from the file (a
  file from another call is a ``ValueError`` naming what differs).
* :func:`extend_smc` (``Result.extend``): more draws by MCMC moves at inverse temperature
  1 from the final populations (which leave the posterior invariant).

The programs carry no host callbacks (the progress bar moves between chunks), so JAX's
persistent cache and the program store keep them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from inference import checkpoint as ckpt
from inference import interrupt
from inference.arguments import positive_int, split_arguments, static_part
from inference.chains import ChainOutputs
from inference.stacklevel import user_stacklevel
from inference.programs.cache import compiling
from inference.progress import ProgressBar
from inference.sharding import (AXIS, constrain_leading, describe, gather, mesh_for, put_leading,
                                replicated)
from inference.smc.checks import cpu_mesh_without_lapack, raise_if_no_likelihood
from ppl.errors import ModelError
from ppl.potential import potential as make_potential
from ppl.tracing import model_name, site_reasons, trace_model, unsampleable_sites

from inference.smc.model import _lapack_in_smc, _model_terms, _prior_draw, _split_potential
from inference.smc.tempering import TemperingState, _check_schedule as _schedule, tempering

__all__ = ["run_smc", "extend_smc", "CHUNK_SECONDS"]

CHUNK_SECONDS = 1.0  # chunks after the first are sized to take about this long


class _Job:
    """What does not change during a run: the model split into prior and likelihood (the
    enumerated sites summed out), the method's settings, the chains and the meshes."""

    def __init__(self, method: Any, model: Callable, args: tuple, kwargs: dict,
                 num_chains: int, devices: Any, trace: dict | None, warn_level: int):
        self.method, self.model, self.C = method, model, num_chains
        self.args, self.kwargs = tuple(args), dict(kwargs)
        n = self.n = method.num_particles
        self.pot = pot = make_potential(model, *args, **kwargs)
        self.trace = trace if trace is not None else trace_model(model, *args, **kwargs)
        self.sites = sites = list(pot.sites)
        self.enumeration = pot.enumeration
        if not sites:
            raise ModelError(f"SMC: model {model_name(model)} has no latent sites to sample.")
        has_likelihood = any(s["type"] == "sample" and s["is_observed"]
                             for s in self.trace.values())
        if not has_likelihood and warn_level:
            warnings.warn(
                f"SMC: model {model_name(model)} has no observed sites or factors, so its "
                "likelihood is 1: the log evidence is 0 and the draws are prior draws.",
                stacklevel=warn_level,
            )
        try:
            # Traced for its shapes, not run: a prior draw far in the tails can overflow the
            # model's arithmetic (ARMA's recursion in float32), and NumPyro's argument checks
            # would then raise on the observed sites' distributions; the particles'
            # non-finite likelihoods are the tempering's (and its checks') to see.
            u0_shapes = jax.eval_shape(functools.partial(_prior_draw, model, args, kwargs, sites),
                                       jax.random.key(0))
        except (NotImplementedError, ImportError) as err:
            bad = unsampleable_sites(self.trace)
            why = site_reasons(bad) or f"{err}"
            raise ModelError(
                f"SMC: model {model_name(model)} has a prior that cannot be sampled here "
                f"({why}). SMC starts from prior draws, so every latent site needs a proper "
                "prior with a sampler (and the package it needs). Use a proper prior, install "
                "the missing package, or use a method that does not draw from the prior, "
                "such as NUTS."
            ) from None
        if num_chains > 1:
            chain_mesh, particle_mesh = mesh_for(devices, num_chains, what="chains",
                                                 owner="SMC"), None
        else:
            chain_mesh, particle_mesh = None, mesh_for(devices, n, what="particles", owner="SMC")
        if (chain_mesh or particle_mesh) is not None:
            u0 = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), u0_shapes)
            ops = _lapack_in_smc(method, model, args, kwargs, sites, u0, self.enumeration)
            chain_mesh = cpu_mesh_without_lapack(chain_mesh, ops, "chains", "SMC")
            particle_mesh = cpu_mesh_without_lapack(particle_mesh, ops, "particles", "SMC")
        self.chain_mesh, self.particle_mesh = chain_mesh, particle_mesh
        # The data enter the programs as arguments (new data of the same shapes reuse them).
        self.dyn, self.rebuild = split_arguments((self.args, self.kwargs))
        self.static = static_part((self.args, self.kwargs))

    # -- the pieces every program builds from the data ---------------------------------
    def _parts(self, dyn):
        a, kw = self.rebuild(dyn)
        logprior, loglik = _split_potential(self.model, a, kw, self.sites, self.enumeration)
        return a, kw, logprior, loglik

    def _tempering(self, logprior, loglik, particles):
        m = self.method
        return tempering(
            logprior, loglik, m.kernel, particles, num_mcmc_steps=m.num_mcmc_steps,
            schedule=m.schedule, target_ess=m.target_ess, resampling=m.resampling,
            init_step_size=m.init_step_size, target_acceptance=m.target_acceptance,
            adapt_step_size=m.adapt_step_size, max_stages=m.max_stages,
            mesh=self.particle_mesh)

    def _chains(self, tree):
        return constrain_leading(tree, self.chain_mesh, self.C)

    def _particle_shardings(self, states):
        """With the particles split over devices (one chain): the states' shardings, the
        particle axis (after the chain axis) split and the rest whole. The states go in
        and out of the programs this way, so every call finds them as compiled."""
        split = NamedSharding(self.particle_mesh, PartitionSpec(None, AXIS))
        whole = replicated(self.particle_mesh)
        return jax.tree.map(
            lambda x: split if len(x.shape) >= 2 and x.shape[1] == self.n else whole, states)

    def _particles_split(self, states):
        """Inside a program: the states as :meth:`_particle_shardings` places them."""
        if self.particle_mesh is None:
            return states
        return jax.tree.map(jax.lax.with_sharding_constraint, states,
                            self._particle_shardings(states))

    def place(self, states):
        """Outside the programs: the chains' states where the programs take them."""
        if self.particle_mesh is not None:
            return jax.device_put(states, self._particle_shardings(states))
        return put_leading(states, self.chain_mesh, self.C)

    def _key(self, label, *more):
        return ("smc", label, self.model, self.method, self.static, self.C, self.chain_mesh,
                self.particle_mesh, *more)

    # -- the programs ------------------------------------------------------------------
    def init_program(self, keys, dyn):
        a, kw, logprior, loglik = self._parts(dyn)
        n = self.n

        def one(key):
            k_init, k_smc, _ = jax.random.split(key, 3)
            positions = jax.vmap(functools.partial(_prior_draw, self.model, a, kw, self.sites))(
                jax.random.split(k_init, n))
            # Which observed sites' log-likelihood is not finite at every initial particle
            # (invalid data: NaN, values outside the support); checked on the host after.
            terms = jax.vmap(lambda u: _model_terms(self.model, a, kw)(u)[1])(positions)
            finite = {s: jnp.isfinite(v) for s, v in terms.items()}
            t = self._tempering(logprior, loglik, positions)
            state = t.start(positions, k_smc)
            checks = {"dead": ~jnp.any(jnp.isfinite(state.loglikelihood)),
                      "all_bad": {s: ~jnp.any(f) for s, f in finite.items()},
                      "any_bad": {s: ~jnp.all(f) for s, f in finite.items()}}
            return state, t.done(state), checks

        return self._chains(jax.vmap(one)(keys))

    def chunk_program(self, states, until, dyn):
        _, _, logprior, loglik = self._parts(dyn)

        def one(state):
            t = self._tempering(logprior, loglik, state.particles)
            state = t.advance(state, until)
            return state, t.done(state)

        return self._chains(jax.vmap(one)(states))

    def run_program(self, states, until, keys, dyn, start):
        """The stages up to ``until``; the first call (``start`` true) makes the chains'
        states first (prior draws, the invalid-data checks, the tempering's start) instead
        of taking ``states`` (then blanks). One program for both: compiling the start apart
        cost ~15% more compile time. Returns ``(states, done, checks)``."""
        like = jax.eval_shape(self.init_program, keys, dyn)[2]  # traced only when compiling

        def fresh(_):
            states, _, checks = self.init_program(keys, dyn)
            return states, checks

        def given(states):
            return states, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), like)

        states, checks = jax.lax.cond(start, fresh, given, states)
        states, done = self.chunk_program(states, until, dyn)
        return self._particles_split(states), done, checks

    def blank_states(self, keys):
        """Placeholder states of the right structure for :meth:`run_program`'s first call."""
        dtype, C, n = jnp.result_type(float), self.C, self.n
        m = self.method
        R = m.max_stages if m.schedule is None else int(jnp.shape(_schedule(m.schedule))[0])
        zeros = lambda *shape: jnp.zeros((C, *shape), dtype)  # noqa: E731
        count = jnp.zeros((C,), jnp.int32)
        particles = {name: zeros(n, *shape) for name, shape in self.pot.sites.items()}
        states = TemperingState(particles, zeros(n), zeros(), zeros(), zeros(), count, keys,
                                count, zeros(R + 1), zeros(R), zeros(R), zeros(R))
        return self.place(states)

    def finish_program(self, states, keys, dyn, num_samples):
        a, kw, logprior, loglik = self._parts(dyn)
        constrain = dataclasses.replace(self.pot, args=tuple(a), kwargs=dict(kw)).to_constrained
        dtype = jnp.result_type(float)

        def one(state, key):
            _, _, k_pick = jax.random.split(key, 3)
            out = self._tempering(logprior, loglik, state.particles).result(state)
            idx = jax.random.choice(k_pick, self.n, (num_samples,), replace=False)
            draws = jax.tree.map(lambda v: v[idx], out.particles)
            lp = jax.vmap(logprior)(draws) + out.loglikelihood[idx]
            n_grad = jnp.full((num_samples,), out.n_grad / num_samples, dtype)
            tuning = {
                "log_evidence": out.log_evidence, "temperatures": out.temperatures,
                "num_stages": out.num_stages, "acceptance_rate": out.acceptance_rate,
                "step_size": out.step_size, "ess": out.ess, "n_grad": out.n_grad,
            }
            return jax.vmap(constrain)(draws), {"lp": lp, "n_grad": n_grad}, tuning

        return self._chains(jax.vmap(one)(states, keys))

    def extend_program(self, states, keys, dyn):
        """One round of more draws per chain: ``num_mcmc_steps`` moves at inverse
        temperature 1 of the whole population, which comes back in a random order (the
        host keeps as many as it needs)."""
        a, kw, logprior, loglik = self._parts(dyn)
        constrain = dataclasses.replace(self.pot, args=tuple(a), kwargs=dict(kw)).to_constrained

        def one(state, key):
            k_move, k_order = jax.random.split(key)
            t = self._tempering(logprior, loglik, state.particles)
            particles, acc, grads = t.move(state.particles, 1.0, state.step_size, k_move)
            ll = jax.vmap(loglik)(particles)
            order = jax.random.permutation(k_order, self.n)
            draws = jax.tree.map(lambda v: v[order], particles)
            lp = jax.vmap(logprior)(draws) + ll[order]
            new = state._replace(particles=particles, loglikelihood=ll,
                                 n_grad=state.n_grad + grads.astype(state.n_grad.dtype))
            return new, (jax.vmap(constrain)(draws), lp, acc, grads)

        states, out = self._chains(jax.vmap(one)(states, keys))
        return self._particles_split(states), out

    # -- the host side -----------------------------------------------------------------
    def fingerprint(self, key, num_samples) -> dict:
        return {"method": _settings(self.method), "num_samples": num_samples, "num_chains": self.C,
                "key": ckpt.to_host(jax.random.key_data(key)).tolist(),
                "data": ckpt.data_digest((self.args, self.kwargs)),
                "sites": {n: list(s) for n, s in self.pot.sites.items()},
                "enumerated": list(self.enumeration.sites) if self.enumeration else [],
                "x64": bool(jax.config.jax_enable_x64)}

    def like_states(self, keys):
        """The structure, shapes and dtypes of the chains' states in :func:`_raw` form."""
        return jax.eval_shape(lambda k, d: _raw(self.init_program(k, d)[0]), keys, self.dyn)

    def restore(self, keys, leaves, impl, where):
        """Chain states from stored leaves (checked against the model and method)."""
        return self.place(_cooked(ckpt.unflatten_like(self.like_states(keys), leaves, where), impl))

    def chain_state(self, states, key, t, draws, requested) -> ckpt.ChainState:
        leaves, treedef = jax.tree_util.tree_flatten(_raw(gather(states)))
        return ckpt.ChainState([ckpt.to_host(x) for x in leaves], treedef,
                               ckpt.to_host(jax.random.key_data(key)),
                               str(jax.random.key_impl(key)), int(t), 0, self.C, int(draws),
                               int(requested))


def _settings(method: Any) -> str:
    """The method's settings as a string that is the same in a new process (a kernel
    function by its module and name, not its address)."""
    def stable(v):
        if callable(v):
            v = getattr(v, "differentiable", v)  # blackjax.mala & co. wrap their factory
            return f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__qualname__)}"
        if isinstance(v, (np.ndarray, jax.Array)):
            return repr(np.asarray(v).tolist())
        return repr(v)

    fields = ", ".join(f"{f.name}={stable(getattr(method, f.name))}"
                       for f in dataclasses.fields(method))
    return f"{type(method).__name__}({fields})"


def _raw(states):
    """The states with their PRNG keys as raw key data (arrays a file can hold)."""
    return states._replace(key=jax.random.key_data(states.key))


def _cooked(raw, impl: str):
    """:func:`_raw`'s inverse (``impl``: the keys' implementation name)."""
    return raw._replace(key=jax.random.wrap_key_data(raw.key, impl=impl))


def _where(states) -> str:
    """Each chain's stage and inverse temperature, for messages."""
    stage, beta = np.asarray(gather(states.stage)), np.asarray(gather(states.beta))
    return ", ".join(f"chain {c}: stage {int(s)}, beta {float(b):.4g}"
                     for c, (s, b) in enumerate(zip(stage.reshape(-1), beta.reshape(-1))))


def run_smc(method: Any, model: Callable, args: tuple, kwargs: dict, *, key: jax.Array,
            num_samples: int, num_chains: int, progress: bool = True, devices: Any = None,
            trace: dict | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int | None = None) -> ChainOutputs:
    """``num_chains`` independent tempered SMCs of ``method`` (an :class:`inference.SMC`):
    ``(samples, stats, tuning, timing)`` with the final populations as ``.state``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from inference.smc import SMC
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> out = run_smc(SMC(num_particles=100, num_mcmc_steps=2), model, (), {"y": 1.0},
        ...               key=jax.random.key(0), num_samples=10, num_chains=2, progress=False)
        >>> out[0]["mu"].shape, int(out.state.draws)
        ((2, 10), 10)
    """
    n = method.num_particles
    if num_samples > n:
        raise ValueError(
            f"SMC: num_samples={num_samples} draws per chain are taken without replacement "
            f"from num_particles={n} particles; raise num_particles to at least "
            f"{num_samples} (e.g. SMC(num_particles={num_samples})) or lower num_samples."
        )
    if checkpoint is None and checkpoint_every is not None:
        raise ValueError("SMC: checkpoint_every is given but checkpoint is not: pass "
                         "checkpoint='run.npz' (the file to write) as well.")
    every = 1 if checkpoint_every is None else positive_int("checkpoint_every", checkpoint_every)
    job = _Job(method, model, args, kwargs, num_chains, devices, trace, user_stacklevel())
    keys = put_leading(jax.random.split(key, num_chains), job.chain_mesh, num_chains)
    fingerprint = job.fingerprint(key, num_samples) if checkpoint is not None else None
    with compiling("SMC", progress) as programs:
        restored = None
        if checkpoint is not None and os.path.exists(checkpoint):
            arrays, meta = ckpt.read_checkpoint(checkpoint, fingerprint)
            stored = [arrays[f"state{i}"] for i in range(meta["num_state"])]
            restored = job.restore(keys, stored, meta["key_impl"],
                                   f"checkpoint {os.fspath(checkpoint)!r}")
        states = job.blank_states(keys) if restored is None else restored
        as_int = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
        start = jnp.asarray(restored is None)
        chunk_c = programs.compile(jax.jit(job.run_program),
                                   (states, as_int(0), keys, job.dyn, start),
                                   key=job._key("run"))
        finish_c = programs.compile(
            jax.jit(functools.partial(job.finish_program, num_samples=num_samples)),
            (states, keys, job.dyn), key=job._key("finish", num_samples))
    t_run = time.perf_counter()

    def save(states):
        stage = int(np.max(np.asarray(gather(states.stage))))
        leaves = jax.tree.leaves(_raw(gather(states)))
        ckpt.write_archive(checkpoint, {f"state{i}": ckpt.to_host(x) for i, x in enumerate(leaves)},
                           {"kind": "checkpoint", "run": fingerprint, "stage": stage,
                            "num_state": len(leaves), "key_impl": str(jax.random.key_impl(key))})

    # The stage the running chains stand at (finished chains stop earlier). The first call
    # makes the states (or, resumed, says which chains are done) and runs no stage: the
    # invalid-data checks come before any stage.
    stage = int(np.max(np.asarray(gather(states.stage))))
    states, done, checks = chunk_c(states, as_int(stage), keys, job.dyn, start)
    if restored is None:
        raise_if_no_likelihood(model, job.trace, gather(checks), n)
    bar = ProgressBar(100, desc="SMC", enabled=progress)
    size, latest, no = 1, states, jnp.asarray(False)
    # The first Ctrl-C sets a flag read after each chunk (inference.interrupt: a raised
    # KeyboardInterrupt can be lost in a callback); the second raises at once.
    with interrupt.deferred() as pressed:
        try:
            while not bool(np.all(np.asarray(gather(done)))):
                interrupt.check(pressed)
                until = stage + size
                if checkpoint is not None:  # stop where the next checkpoint is due
                    until = min(until, (stage // every + 1) * every)
                started = time.perf_counter()
                latest, done, _ = chunk_c(states, as_int(until), keys, job.dyn, no)
                # Wait for the chunk: a Ctrl-C then stops after it, not after the whole run.
                jax.block_until_ready(latest)
                rate = (until - stage) / max(time.perf_counter() - started, 1e-6)
                states, stage = latest, until
                size = int(min(max(1, 2 * size), max(1, rate * CHUNK_SECONDS)))
                all_done = bool(np.all(np.asarray(gather(done))))
                if checkpoint is not None and (stage % every == 0 or all_done):
                    save(states)
                beta = float(np.min(np.asarray(gather(states.beta))))
                bar.update(int(100 * beta), {"beta": beta})
        except KeyboardInterrupt:
            jax.block_until_ready(latest)
            states = latest
            if checkpoint is not None:
                save(states)
            raise KeyboardInterrupt(
                f"SMC was interrupted ({_where(states)}); tempering has no posterior draws "
                "before the inverse temperature reaches 1, so nothing is returned. "
                + (f"The checkpoint {os.fspath(checkpoint)!r} holds this state: the same infer "
                   "call resumes from it." if checkpoint is not None else
                   "To be able to resume an interrupted run, pass checkpoint='smc.npz' to infer "
                   "(the same call again then resumes it).")) from None
        finally:
            bar.close()
    samples, stats, tuning = gather(finish_c(states, keys, job.dyn))
    jax.block_until_ready((samples, stats, tuning))
    t_end = time.perf_counter()
    final = np.asarray(tuning["temperatures"])[np.arange(num_chains), np.asarray(tuning["num_stages"])]
    if np.any(final < 1.0):
        warnings.warn(
            f"SMC: max_stages={method.max_stages} stages ended before the inverse temperature "
            f"reached 1 (final values {np.round(final, 4).tolist()}); the draws and log "
            "evidence are not the posterior's. Raise max_stages or lower target_ess.",
            stacklevel=user_stacklevel(),
        )
    timing = {"compile": programs.seconds, "run": t_end - t_run,
              "devices": describe(job.chain_mesh or job.particle_mesh), "cache": programs.cache}
    return ChainOutputs(samples, stats, tuning, timing,
                        job.chain_state(states, key, 0, num_samples, num_samples))


def extend_smc(method: Any, model: Callable, args: tuple, kwargs: dict, *,
               state: ckpt.ChainState, num_samples: int, key: jax.Array | None = None,
               progress: bool = True, devices: Any = None) -> ChainOutputs:
    """``num_samples`` more draws per chain from the final populations in ``state`` (a
    run's ``.state``): each round moves every particle by ``num_mcmc_steps`` steps of the
    run's kernel at inverse temperature 1 (the posterior; its last step size and the
    population's variance as preconditioner), then takes distinct particles at random.
    The moves leave the posterior invariant, so the new draws are posterior draws too
    (correlated with the earlier ones through the particles they moved from). With
    ``key=None`` the keys come from the run's key and the number of extensions so far.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from inference.smc import SMC
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> m = SMC(num_particles=100, num_mcmc_steps=2)
        >>> out = run_smc(m, model, (), {"y": 1.0}, key=jax.random.key(0), num_samples=10,
        ...               num_chains=2, progress=False)
        >>> more = extend_smc(m, model, (), {"y": 1.0}, state=out.state, num_samples=150,
        ...                   progress=False)
        >>> more[0]["mu"].shape, more.state.t
        ((2, 150), 1)
    """
    num_samples = positive_int("num_samples", num_samples)
    job = _Job(method, model, args, kwargs, state.num_chains, devices, None, 0)
    base = state.run_key() if key is None else key
    keys = jax.random.split(jax.random.fold_in(base, state.t + 1), state.num_chains)
    keys = put_leading(keys, job.chain_mesh, job.C)
    states = job.restore(keys, state.leaves, state.key_impl, "the saved SMC state")
    with compiling("SMC", progress) as programs:
        extend_c = programs.compile(jax.jit(job.extend_program), (states, keys, job.dyn),
                                    key=job._key("extend"))
    t0 = time.perf_counter()
    rounds = math.ceil(num_samples / job.n)
    bar = ProgressBar(rounds, desc="SMC extend", enabled=progress)
    parts, grads, accs = [], 0, []
    try:
        for r in range(rounds):
            round_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, r)
            states, (draws, lp, acc, g) = extend_c(states, round_keys, job.dyn)
            keep = min(job.n, num_samples - r * job.n)
            parts.append(gather(jax.tree.map(lambda v, k=keep: v[:, :k], (draws, lp))))
            grads, accs = grads + np.asarray(gather(g), np.int64), accs + [np.asarray(gather(acc))]
            bar.update(r + 1, {})
    finally:
        bar.close()
    samples, lp = jax.tree.map(lambda *v: np.concatenate(v, axis=1), *parts)
    dtype = np.asarray(lp).dtype
    n_grad = np.repeat((grads / num_samples).astype(dtype)[:, None], num_samples, axis=1)
    tuning = {"acceptance_rate": np.mean(accs, axis=0), "n_grad": grads}
    timing = {"compile": programs.seconds, "run": time.perf_counter() - t0,
              "devices": describe(job.chain_mesh or job.particle_mesh), "cache": programs.cache}
    new = job.chain_state(states, state.run_key(), state.t + 1, state.draws + num_samples,
                          state.requested + num_samples)
    return ChainOutputs(samples, {"lp": lp, "n_grad": n_grad}, tuning, timing, new)
