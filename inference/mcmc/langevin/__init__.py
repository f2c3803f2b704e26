r"""Langevin samplers as BlackJAX-protocol kernels, and a differentiable short-run Langevin flow.

Every kernel is built as ``alg = kernel(logdensity_fn, step_size=..., ...)`` and used as
``state = alg.init(position, rng_key=None)``, ``state, info = alg.step(key, state)``. Steps
are pure, jittable and ``jax.vmap``-able over chains; positions may be any pytree (dicts of
arrays). Every ``info`` has ``n_grad``, the gradient evaluations of that step; kernels with
an accept step also report ``acceptance_rate`` and ``is_accepted``. States cache the log
density and its gradient at the current position, so each step costs the minimum number of
gradient evaluations (1 for all but the randomized midpoint kernel, which needs 2).

Conventions. ``log p`` is the target's log density, ``g = grad log p``, ``h`` the step
size. The optional ``inverse_mass_matrix`` ``M`` (a vector: diagonal; a matrix: dense; over
the flattened position, see ``jax.flatten_util.ravel_pytree``) preconditions every kernel:
the overdamped kernels follow ``dX = M g dt + sqrt(2) M^{1/2} dW``, the underdamped ones

.. math::  dX = M P\,dt, \qquad dP = g(X)\,dt - \gamma P\,dt + \sqrt{2\gamma}\,M^{-1/2} dW,

whose stationary law is ``p(x) N(p; 0, M^{-1})`` (``gamma`` is ``friction``).

Kernels: :func:`ula`, :func:`mala`, :func:`underdamped` (BAOAB), :func:`obabo` (=
``underdamped(adjusted=True)``), :func:`randomized_midpoint`, :func:`sgld`, :func:`sghmc`
(with :func:`minibatch_grad_estimator`). Tuning: :func:`adapt`. Flow: :func:`flow`.
"""

from __future__ import annotations

from inference.mcmc.langevin.states import LangevinState, UnderdampedState, SGLDState, SGHMCState, ULAInfo, MALAInfo, UnderdampedInfo, OBABOInfo, SGInfo  # noqa: F401
from inference.mcmc.langevin.overdamped import ula, mala, _accept  # noqa: F401
from inference.mcmc.langevin.underdamped import underdamped, obabo, randomized_midpoint, _ou_noise  # noqa: F401
from inference.mcmc.langevin.stochastic import sgld, sghmc, minibatch_grad_estimator  # noqa: F401
from inference.mcmc.langevin.tuning import adapt  # noqa: F401
from inference.mcmc.langevin.flow import flow  # noqa: F401

__all__ = [
    "LangevinState",
    "UnderdampedState",
    "SGLDState",
    "SGHMCState",
    "ULAInfo",
    "MALAInfo",
    "UnderdampedInfo",
    "OBABOInfo",
    "SGInfo",
    "ula",
    "mala",
    "underdamped",
    "obabo",
    "randomized_midpoint",
    "sgld",
    "sghmc",
    "minibatch_grad_estimator",
    "adapt",
    "flow",
]
