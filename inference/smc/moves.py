"""The move kernel: what the SMC sets on it (step size, mass matrix) and how its gradients are counted."""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from inference.smc.checks import (Probe, probe_move)

from inference.smc.rwm import KERNELS


class _Move(NamedTuple):
    build: Callable  # (logdensity_fn, step_size, inverse_mass_matrix) -> SamplingAlgorithm
    tunable: bool  # the SMC sets the step size
    preconditioned: bool  # the SMC passes the particles' variance as inverse_mass_matrix
    init_step_size: float | None
    target_acceptance: float | None
    name: str


def _signature_of(kernel: Callable) -> inspect.Signature | None:
    fn = getattr(kernel, "differentiable", kernel)  # blackjax.mala & co. wrap their factory
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _resolve_kernel(kernel: Any, init_step_size: float | None, target_acceptance: float | None,
                    adapt_step_size: bool, dim: int, where: str = "tempered_smc") -> _Move:
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(
                f"{where}(kernel={kernel!r}): unknown kernel name; use one of {sorted(KERNELS)}, "
                "a kernel factory taking (logdensity_fn, step_size, ...) such as "
                "inference.langevin.mala, or a callable logdensity_fn -> SamplingAlgorithm."
            )
        spec = KERNELS[kernel]
        factory = spec.factory
        h0 = spec.init_step_size(dim) if init_step_size is None else float(init_step_size)
        target = spec.target_acceptance if target_acceptance is None else float(target_acceptance)
        if not adapt_step_size:
            return _Move(lambda f, h, m: factory(f, h0), False, False, h0, None, kernel)
        return _Move(lambda f, h, m: factory(f, h, m), True, True, h0, target, kernel)
    if not callable(kernel):
        raise TypeError(
            f"{where}(kernel={kernel!r}): must be one of {sorted(KERNELS)}, a kernel factory "
            "(logdensity_fn, step_size, ...) -> SamplingAlgorithm, or a callable "
            "logdensity_fn -> SamplingAlgorithm."
        )
    name = getattr(kernel, "__name__", None) or type(kernel).__name__
    sig = _signature_of(kernel)
    params = {} if sig is None else sig.parameters
    takes_step = "step_size" in params
    takes_imm = "inverse_mass_matrix" in params
    default = params["step_size"].default if takes_step else inspect.Parameter.empty
    target = 0.574 if target_acceptance is None else float(target_acceptance)
    if not (takes_step and adapt_step_size):
        h_fixed = init_step_size
        if takes_step and h_fixed is None and default is inspect.Parameter.empty:
            raise ValueError(
                f"{where}: kernel {name} needs a step_size and adapt_step_size=False; pass "
                "init_step_size=..., bind it (functools.partial(kernel, step_size=...)) or let "
                "the SMC adapt it."
            )
        if takes_step and h_fixed is not None:
            return _Move(lambda f, h, m: kernel(f, step_size=h_fixed), False, False,
                         float(h_fixed), None, name)
        return _Move(lambda f, h, m: kernel(f), False, False, None, None, name)
    if init_step_size is not None:
        h0 = float(init_step_size)
    elif default is not inspect.Parameter.empty and default is not None:
        h0 = float(default)
    else:
        h0 = float(dim) ** (-1.0 / 3.0)
    if takes_imm:
        build = lambda f, h, m: kernel(f, step_size=h, inverse_mass_matrix=m)  # noqa: E731
    else:
        build = lambda f, h, m: kernel(f, step_size=h)  # noqa: E731
    return _Move(build, True, takes_imm, h0, target, name)


def _info_field(info: Any, name: str) -> Any:
    if isinstance(info, dict):
        return info.get(name)
    return getattr(info, name, None)


def _step_grads(info: Any, traced: int) -> jax.Array:
    """Gradients one move step computed: ``info.n_grad`` when the kernel reports it, else
    ``info.num_integration_steps`` (BlackJAX's HMC/NUTS: one per leapfrog step), else the
    gradients found when tracing the step (``traced``, see :func:`inference.smc_checks.probe_move`)."""
    n = _info_field(info, "n_grad")
    if n is None:
        n = _info_field(info, "num_integration_steps")
    return jnp.asarray(traced if n is None else n, jnp.int32)


def _probe(move: _Move, logprior_fn: Callable, loglikelihood_fn: Callable, particle: Any,
           key: jax.Array, dim: int, dtype: Any) -> Probe:
    """:func:`inference.smc_checks.probe_move` for ``move`` at its initial step size."""
    h = 1.0 if move.init_step_size is None else move.init_step_size
    imm = jnp.ones((dim,), dtype) if move.preconditioned else None
    return probe_move(lambda f: move.build(f, h, imm), logprior_fn, loglikelihood_fn, particle, key)
