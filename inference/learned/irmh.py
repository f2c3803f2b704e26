"""Independent Metropolis-Hastings (IRMH) as a BlackJAX-protocol kernel."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm

from inference.mcmc.langevin import _accept

__all__ = ["IRMHState", "IRMHInfo", "irmh"]


class IRMHState(NamedTuple):
    """IRMH state: the position, ``log p`` and the proposal's ``log q`` there."""

    position: Any
    logdensity: jax.Array
    proposal_logdensity: jax.Array


class IRMHInfo(NamedTuple):
    """One IRMH step: ``acceptance_rate`` (the MH probability), ``is_accepted``,
    ``log_weight`` (``log p - log q`` of the proposed point: draws of ``q`` with their
    importance weights, for diagnostics) and ``n_grad`` (always 0)."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    log_weight: jax.Array
    n_grad: jax.Array


def irmh(
    logdensity_fn: Callable[[Any], jax.Array],
    proposal_sample: Callable[[jax.Array], Any],
    proposal_logdensity: Callable[[Any], jax.Array] | None,
    *,
    sample_returns_logdensity: bool = False,
) -> SamplingAlgorithm:
    r"""Independent Metropolis-Hastings (IRMH) as a BlackJAX-protocol kernel.

    Each step draws ``x' = proposal_sample(key)`` independently of the state and moves there
    with probability ``min(1, p(x') q(x) / (p(x) q(x')))`` (module docstring). ``p`` and ``q``
    may be unnormalised (constants cancel). The state caches ``log p`` and ``log q`` at the
    current point, so a step costs one draw, one ``log p`` and (unless the sampler returns
    it) one ``log q``. ``init``/``step`` are pure, jittable and ``vmap``-able over chains;
    positions may be any pytree the three functions agree on. (Not ``blackjax.irmh``: that
    one evaluates ``log q`` at both points every step, cannot take the density that comes
    with a draw, and its info holds the accepted state, not the proposal, whose weight the
    importance diagnostics need.)

    Args:
        logdensity_fn: ``log p`` of the target at one position.
        proposal_sample: ``key -> x'`` (one position); with
            ``sample_returns_logdensity=True``, ``key -> (x', log q(x'))`` (a flow gives
            both in one forward pass: :meth:`Flow.sample_and_log_prob`).
        proposal_logdensity: ``log q`` at one position: needed by ``init`` (and by ``step``
            unless the sampler returns it). ``None`` is an error: IRMH needs the density.

    Exactness needs ``log q`` to be the density of the draws at the draws, and at the initial
    position (an error there biases a chain's decisions until its first accepted move, after
    which the state holds a draw and the density that came with it; starting from a draw of
    ``q`` with its own density avoids the question). A NaN or ``+inf`` log weight at the proposal
    rejects it; from a state with ``p(x) = 0`` (or a NaN weight) any proposal of finite
    weight is accepted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = irmh(lambda x: -0.5 * x**2, lambda k: jax.random.normal(k),
        ...            lambda x: -0.5 * x**2)                     # q = p: always accepted
        >>> state, info = alg.step(jax.random.key(0), alg.init(jnp.array(3.0)))
        >>> float(info.acceptance_rate), int(info.n_grad)
        (1.0, 0)
    """
    if not callable(logdensity_fn):
        raise TypeError(f"irmh: logdensity_fn must be callable; got {logdensity_fn!r}.")
    if not callable(proposal_sample):
        raise TypeError(f"irmh: proposal_sample must be callable (key -> point); got "
                        f"{proposal_sample!r}.")
    if proposal_logdensity is None:
        raise ValueError(
            "irmh: the proposal has no density (proposal_logdensity=None). The independent "
            "Metropolis correction needs log q at the proposed and current points; use a "
            "proposal with a density (a normalizing flow, or a flow-matching sampler with "
            "density='jacobian'), or draw from the proposal without correction.")
    if not callable(proposal_logdensity):
        raise TypeError(f"irmh: proposal_logdensity must be callable (point -> log q); got "
                        f"{proposal_logdensity!r}.")

    def init(position: Any, rng_key: jax.Array | None = None) -> IRMHState:
        del rng_key
        return IRMHState(position, jnp.asarray(logdensity_fn(position)),
                         jnp.asarray(proposal_logdensity(position)))

    def step(rng_key: jax.Array, state: IRMHState) -> tuple[IRMHState, IRMHInfo]:
        k_prop, k_acc = jax.random.split(rng_key)
        if sample_returns_logdensity:
            proposal, log_q = proposal_sample(k_prop)
        else:
            proposal = proposal_sample(k_prop)
            log_q = proposal_logdensity(proposal)
        log_p = jnp.asarray(logdensity_fn(proposal))
        log_q = jnp.asarray(log_q, log_p.dtype)
        log_w_new = log_p - log_q
        log_w_old = state.logdensity - state.proposal_logdensity
        new_ok = ~(jnp.isnan(log_w_new) | (log_w_new == jnp.inf))
        old_ok = ~jnp.isnan(log_w_old) & (log_w_old > -jnp.inf)
        log_ratio = jnp.where(
            new_ok,
            jnp.where(old_ok, log_w_new - jnp.where(old_ok, log_w_old, 0.0),
                      jnp.where(log_w_new > -jnp.inf, 0.0, -jnp.inf)),
            -jnp.inf)
        rate, accepted = _accept(k_acc, log_ratio)
        pick = lambda a, b: jnp.where(accepted, a, b)  # noqa: E731
        new_state = IRMHState(
            jax.tree.map(pick, proposal, state.position),
            pick(log_p, state.logdensity),
            pick(log_q, state.proposal_logdensity),
        )
        return new_state, IRMHInfo(rate, accepted, log_w_new, jnp.zeros((), jnp.int32))

    return SamplingAlgorithm(init, step)
