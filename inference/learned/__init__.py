r"""Learned samplers for a model's posterior, with an independent Metropolis correction.

Train a density model of the posterior once, then draw from it cheaply:

1. *Where the draws come from.* Draws of another method (NUTS, any ``infer`` method, a
   :class:`inference.Result`, a dict of constrained samples, or an array of unconstrained
   draws), mapped to the model's flat unconstrained space by :func:`unconstrained_draws`;
   or a flow fitted by VI (``VI(guide="flow")``), read back by :func:`flow_from_vi`.
2. *What is learned.* A normalizing flow fitted by maximum likelihood to the draws
   (:func:`fit_flow_to_draws`, any kind of :mod:`inference.flows`), or a flow-matching
   velocity field (:func:`fit_flow_matching_to_draws`, :mod:`inference.flow_matching`)
   whose ODE is the sampler. Both are :class:`Flow` / :class:`FlowMatchingSampler` objects
   with ``sample``, ``sample_and_log_prob`` and ``log_prob``, over the whitened draws (a
   fixed affine map ``x = loc + L y`` from the draws' mean and covariance, then the learned
   map on ``y``).
3. *How it is used.* Either as i.i.d. draws (``correct=None``: exact only as far as the
   learned density is, diagnosed by the importance weights' Pareto ``k``), or as the
   proposal of an independent Metropolis-Hastings chain (:func:`irmh`), exact for the
   posterior whatever the proposal, as long as the proposal's density is exact for its own
   draws and its tails are not lighter than the posterior's (then ``k < 0.7`` in practice).

The :class:`Learned` method puts the three together behind ``inference.infer``.

IRMH. With proposal ``q`` independent of the current state, the Metropolis-Hastings
acceptance probability of ``x -> x'`` is

.. math::  \min\Big(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Big) = \min\big(1, w(x') / w(x)\big),
           \qquad w = p / q,

so the chain moves to a draw of ``q`` with probability growing with its importance weight.
It is uniformly ergodic when ``w`` is bounded (Mengersen & Tweedie 1996), and gets stuck at
points of large ``w`` when ``q``'s tails are too light. No gradients are needed.

Proposal densities. For a :class:`Flow` the forward map gives a draw and its density in
one pass (``log q(x) = log N(z) - log |det dT/dz|``), for every flow kind. For a
:class:`FlowMatchingSampler` the sampler is the fixed-step integrator's map ``Phi`` of the
ODE; ``density="jacobian"`` (default) takes ``log |det dPhi/dz|`` of that very map (``D``
forward-mode passes through the integration: for small ``D``), so the density is exact for
the draws and IRMH is exact; ``density="ode"`` integrates the exact divergence along the
path (:func:`inference.flow_matching.log_density`), which is the density of the exact ODE
flow and is off by the discretisation error for the integrator's draws (IRMH then targets
``p`` up to that error).

Modules: ``draws`` (:func:`unconstrained_draws`), ``whitening``, ``flow`` (:class:`Flow`),
``flow_matching_sampler`` (:class:`FlowMatchingSampler`), ``fitting``, ``irmh``,
``diagnostics`` (:func:`pareto_khat`, :func:`importance_diagnostics`), ``sampling`` (chains
on a proposal), ``method`` (:class:`Learned`); every public name is importable from here.

Example:
    >>> import jax, jax.numpy as jnp
    >>> target = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)          # N(1, I)
    >>> proposal = lambda x: -0.5 * jnp.sum(x**2 / 4.0)             # N(0, 4 I), up to a constant
    >>> alg = irmh(target, lambda k: 2.0 * jax.random.normal(k, (2,)), proposal)
    >>> def run(key):
    ...     def body(state, k):
    ...         state, info = alg.step(k, state)
    ...         return state, (state.position, info.acceptance_rate)
    ...     return jax.lax.scan(body, alg.init(jnp.zeros(2)), jax.random.split(key, 2000))[1]
    >>> xs, rate = jax.jit(run)(jax.random.key(0))
    >>> bool(jnp.all(jnp.abs(xs[200:].mean(0) - 1.0) < 0.2)), 0.2 < float(rate.mean()) < 0.9
    (True, True)
"""

from __future__ import annotations

from inference.learned.checks import FLOW_MATCHING_NAMES
from inference.learned.diagnostics import importance_diagnostics, pareto_khat
from inference.learned.draws import unconstrained_draws
from inference.learned.fitting import (
    FittedFlow,
    FittedFlowMatching,
    fit_flow_matching_to_draws,
    fit_flow_to_draws,
    flow_from_vi,
)
from inference.learned.flow import Flow
from inference.learned.flow_matching_sampler import FlowMatchingSampler
from inference.learned.irmh import IRMHInfo, IRMHState, irmh
from inference.learned.method import Learned

__all__ = [
    "Flow",
    "FlowMatchingSampler",
    "FittedFlow",
    "FittedFlowMatching",
    "IRMHState",
    "IRMHInfo",
    "Learned",
    "irmh",
    "unconstrained_draws",
    "fit_flow_to_draws",
    "fit_flow_matching_to_draws",
    "flow_from_vi",
    "pareto_khat",
    "importance_diagnostics",
    "FLOW_MATCHING_NAMES",
]
