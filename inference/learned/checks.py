"""Names and argument checks shared by the learned samplers."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from inference.arguments import check_int

#: ``Learned(flow=...)`` names that train a flow-matching field instead of a flow.
FLOW_MATCHING_NAMES = ("flow_matching", "cfm", "rectified_flow")
_STANDARDIZE = ("full", "diag", None)
_FIXED_STEP = ("euler", "heun", "rk4")


def _std_normal_log_prob(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


_positive_int = check_int  # the library's one rule (inference.arguments)


def _check_optimizer(owner: str, optimizer: Any) -> None:
    if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                      and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"{owner}: optimizer must be an optax GradientTransformation; got "
                        f"{optimizer!r}.")


def _proposal_has_density(proposal: Any) -> bool:
    if not callable(getattr(proposal, "log_prob", None)):
        return False
    return getattr(proposal, "has_density", True)


_NO_DENSITY = ("Learned(correct='irmh'): the proposal ({what}) has no density; the independent "
               "Metropolis correction needs log q. Use a normalizing flow, a flow-matching "
               "sampler with density='jacobian' or 'ode', or correct=None for uncorrected draws.")
