"""Drawing with a fitted proposal: IRMH chains on it, or its i.i.d. draws, with statistics.

The IRMH chains run through :func:`inference.chains.run_chains` (progress bar, Ctrl-C
returning the draws so far, ``result.extend``) with :class:`IRMHTarget` as their target.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from inference.chain_target import PotentialTarget
from inference.chains import Sampler
from inference.initialization import InitialSearch
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


def irmh_sampler(proposal: Any, pot: Any, num_warmup: int, num_samples: int) -> Sampler:
    """IRMH chains on ``pot`` (a :class:`ppl.Potential`) with independent proposals from the
    fitted ``proposal``, as an :class:`inference.chains.Sampler`: they start at proposal
    draws (the positions of the initial-point search are not used) and each step proposes
    a fresh draw, accepted with probability ``min(1, w(x') / w(x))``, ``w = p / q``."""
    joint = _sample_with_log_q(proposal)
    if joint is None:
        raise ValueError(_NO_DENSITY.format(what=type(proposal).__name__))
    logdensity = pot.flat_logdensity_fn
    alg = irmh(logdensity, joint, proposal.log_prob, sample_returns_logdensity=True)

    def init(key, positions):
        C = jax.tree.leaves(positions)[0].shape[0]
        x0, lq0 = jax.vmap(joint)(jax.random.split(key, C))
        return IRMHState(x0, jax.vmap(logdensity)(x0), lq0)

    def step(state, t, key):
        C = state.logdensity.shape[0]
        state, info = jax.vmap(alg.step)(jax.random.split(key, C), state)
        stats = {"lp": state.logdensity, "log_q": state.proposal_logdensity,
                 "acceptance_rate": info.acceptance_rate, "is_accepted": info.is_accepted,
                 "proposal_log_weight": info.log_weight, "n_grad": info.n_grad}
        return state, jax.vmap(pot.unravel)(state.position), stats

    return Sampler(init=init, step=step, loop_warmup=int(num_warmup),
                   num_steps=int(num_warmup) + int(num_samples), tuning=lambda state: {})


@dataclasses.dataclass(frozen=True)
class IRMHTarget(PotentialTarget):
    """The chain target (:mod:`inference.chain_target`) of Learned's IRMH chains: the
    model's potential with the fitted ``proposal``, which starts the chains (no search)."""

    proposal: Any = None
    uses_gradient_start = False

    @property
    def program_key(self) -> Any:
        return self.proposal  # baked into the program: a new fit is a new program

    def sampler(self, method: Any, num_warmup: int, num_samples: int) -> tuple[Sampler, Any]:
        return (irmh_sampler(self.proposal, self.pot, num_warmup, num_samples),
                self.pot.logdensity_fn)

    def search(self, check, key, num_chains, tries, radius, given, use_given) -> InitialSearch:
        position = {n: jnp.zeros((num_chains,) + tuple(shape), jnp.result_type(float))
                    for n, shape in self.sites.items()}
        zero = jnp.zeros((num_chains,), jnp.result_type(float))
        return InitialSearch(position, jnp.ones((num_chains,), bool), zero, position,
                             jnp.zeros((num_chains,), jnp.int32))
