"""Names and argument checks shared by the learned samplers."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

#: ``Learned(flow=...)`` names that train a flow-matching field instead of a flow.
FLOW_MATCHING_NAMES = ("flow_matching", "cfm", "rectified_flow")
_STANDARDIZE = ("full", "diag", None)
_FIXED_STEP = ("euler", "heun", "rk4")


def _std_normal_log_prob(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int; got {value!r}.")
    return int(value)


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
