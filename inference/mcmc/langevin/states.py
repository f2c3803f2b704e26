"""The states and infos of the Langevin kernels (NamedTuples, pytrees)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax



class LangevinState(NamedTuple):
    """State of the overdamped kernels (ULA, MALA): position, log p and grad log p there."""

    position: Any
    logdensity: jax.Array
    logdensity_grad: Any


class UnderdampedState(NamedTuple):
    """State of the kinetic kernels (BAOAB, OBABO, randomized midpoint)."""

    position: Any
    momentum: Any
    logdensity: jax.Array
    logdensity_grad: Any


class SGLDState(NamedTuple):
    """State of SGLD: the position only (stochastic gradients are not reusable)."""

    position: Any


class SGHMCState(NamedTuple):
    """State of SGHMC: position and momentum."""

    position: Any
    momentum: Any


class ULAInfo(NamedTuple):
    n_grad: jax.Array


class MALAInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    n_grad: jax.Array


class UnderdampedInfo(NamedTuple):
    n_grad: jax.Array


class OBABOInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    n_grad: jax.Array


class SGInfo(NamedTuple):
    n_grad: jax.Array
