"""Drawing with a fitted proposal: IRMH chains on it, or its i.i.d. draws, with statistics."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from inference import progress as progress_lib
from inference.learned.checks import _NO_DENSITY, _proposal_has_density
from inference.learned.irmh import IRMHState, irmh


def _sample_with_log_q(proposal: Any):
    """``key -> (x, log q(x))`` for one point, from whatever the proposal offers."""
    if callable(getattr(proposal, "sample_and_log_prob", None)) and \
            getattr(proposal, "has_density", True):
        return lambda k: proposal.sample_and_log_prob(k, None)
    if not _proposal_has_density(proposal):
        return None
    return lambda k: (lambda x: (x, proposal.log_prob(x)))(proposal.sample(k, None))


def _iid(proposal, logdensity, constrain, key, num_chains, num_samples):
    """``num_chains x num_samples`` independent proposal draws; their log weights (``None``
    for a proposal without a density)."""
    joint = _sample_with_log_q(proposal)

    @jax.jit
    def run(key):
        keys = jax.random.split(key, (num_chains, num_samples))
        if joint is None:
            x = jax.vmap(jax.vmap(lambda k: proposal.sample(k, None)))(keys)
            lq = None
        else:
            x, lq = jax.vmap(jax.vmap(joint))(keys)
        return constrain(x), jax.vmap(jax.vmap(logdensity))(x), lq

    samples, lp, lq = jax.block_until_ready(run(key))
    stats = {"lp": lp, "n_grad": jnp.zeros(lp.shape, jnp.int32)}
    if lq is None:
        return samples, stats, None
    stats.update(log_q=lq, log_weight=lp - lq)
    return samples, stats, lp - lq


def _irmh_chains(proposal, logdensity, constrain, key, num_chains, num_warmup, num_samples,
                 progress):
    joint = _sample_with_log_q(proposal)
    if joint is None:
        raise ValueError(_NO_DENSITY.format(what=type(proposal).__name__))
    alg = irmh(logdensity, joint, proposal.log_prob, sample_returns_logdensity=True)
    total = num_warmup + num_samples
    bar = progress_lib.ProgressBar(total, desc="Learned IRMH", enabled=progress,
                                   phases=[("warmup", num_warmup), ("sample", num_samples)])
    step = jax.vmap(alg.step)

    def body(carry, xs):
        state, draws, stats = carry
        t, keys = xs
        state, info = step(keys, state)
        row = {"lp": state.logdensity, "log_q": state.proposal_logdensity,
               "acceptance_rate": info.acceptance_rate, "is_accepted": info.is_accepted,
               "proposal_log_weight": info.log_weight, "n_grad": info.n_grad}
        slot = jnp.maximum(t - num_warmup, 0)
        put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0)  # noqa: E731
        return (state, put(draws, state.position), jax.tree.map(put, stats, row)), None

    @jax.jit
    def run(key):
        k_init, k_steps = jax.random.split(key)
        x0, lq0 = jax.vmap(joint)(jax.random.split(k_init, num_chains))
        state = IRMHState(x0, jax.vmap(logdensity)(x0), lq0)
        like = lambda dtype: jnp.zeros((num_samples, num_chains), dtype)  # noqa: E731
        stats = {"lp": like(state.logdensity.dtype), "log_q": like(state.logdensity.dtype),
                 "acceptance_rate": like(state.logdensity.dtype), "is_accepted": like(bool),
                 "proposal_log_weight": like(state.logdensity.dtype), "n_grad": like(jnp.int32)}
        draws = jnp.zeros((num_samples,) + x0.shape, x0.dtype)
        keys = jax.random.split(k_steps, (total, num_chains))
        _, draws, stats = progress_lib.scan(
            body, (state, draws, stats), (jnp.arange(total), keys), total, bar=bar,
            postfix_fn=lambda c: {"accept": jnp.mean(c[2]["is_accepted"])})
        swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
        draws, stats = swap(draws), jax.tree.map(swap, stats)
        return constrain(draws), stats

    try:
        samples, stats = jax.block_until_ready(run(key))
    finally:
        bar.close()
    return samples, stats, stats["proposal_log_weight"]
